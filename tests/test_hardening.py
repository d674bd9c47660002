"""Hardening (issue 11): load past the pool is served, a fault in one item never
stops an actor, hostile bytes get a 4xx, a full store is a 503 that says so.
Every case runs against the real stores."""

from __future__ import annotations

import asyncio
import json
import resource
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from codeq_transports.connections import ConnectionGuard
from conftest import (
    TOKENS,
    Api,
    RunningDaemon,
    ServeProcess,
    StoreProcess,
    start_store,
    store_client,
    wait_for,
)
from redis import exceptions as rx
from redis.asyncio import Redis
from structlog.testing import capture_logs
from test_callbacks import ACME, ADMIN_CALLBACKS, FAST, Receiver, complete, receivers
from test_logs import daemon_process

from codeq.store import keys

__all__ = ["daemon_process", "receivers"]  # fixtures shared with those tests

TASKS = "/v1/codeq/tasks"
CLIENTS = 300  # concurrent requests, far past the pool below


async def _at_once(calls: list[Awaitable[tuple[int, Any, Any]]]) -> Counter[int]:
    return Counter(status for status, _, _ in await asyncio.gather(*calls))


async def test_operations_past_the_pool_wait_for_a_connection(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
) -> None:
    """With 4 store connections, 300 concurrent creates and then 300 concurrent
    claims are all served (they wait for a connection; before, every operation past
    the pool got 503 'Too many connections' at once)."""
    daemon = await start_daemon(store_max_connections=4)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        api = Api(http, daemon.url)
        body = {"command": "LOAD", "payload": {"n": 1}}
        created = await _at_once(
            [api.call("POST", TASKS, "producer", body) for _ in range(CLIENTS)]
        )
        assert created == {202: CLIENTS}, created
        claim = {"commands": ["LOAD"], "waitSeconds": 0}
        claimed = await _at_once(
            [api.call("POST", f"{TASKS}/claim", "worker", claim) for _ in range(CLIENTS)]
        )
        assert claimed == {200: CLIENTS}, claimed


# ------------------------------------------------------------ trace context, poison items

TRACE_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HOSTILE_TRACE = (
    TRACE_PARENT + "\r\nX-Injected: 1",
    TRACE_PARENT.upper(),
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
    "ff" + TRACE_PARENT[2:],
    "not a traceparent",
)


async def test_trace_context_is_w3c_or_400(api: Api, redis: Redis) -> None:
    """traceParent and traceState must be W3C Trace Context: anything else (CR/LF
    that would break a callback header among it) is a 400 naming the field, on a
    create and on a batch item, and nothing is stored."""
    before = await redis.dbsize()
    for bad in HOSTILE_TRACE:
        body = {"command": "T", "payload": {}, "traceParent": bad}
        status, answer, _ = await api.call("POST", TASKS, "producer", body)
        assert (status, answer["field"]) == (400, "traceParent"), (bad, answer)
    for bad in ("a=b\r\nc=d", "UPPER=1", "k=" + "v" * 300, ",".join(f"k{i}=v" for i in range(33))):
        body = {"command": "T", "payload": {}, "traceParent": TRACE_PARENT, "traceState": bad}
        status, answer, _ = await api.call("POST", TASKS, "producer", body)
        assert (status, answer["field"]) == (400, "traceState"), (bad, answer)
    item = {"command": "T", "payload": {}, "traceParent": HOSTILE_TRACE[0]}
    status, answer, _ = await api.call("POST", f"{TASKS}/batch", "producer", {"tasks": [item]})
    assert status == 200 and answer["results"][0]["field"] == "traceParent", answer
    assert await redis.dbsize() == before
    good = await api.create("T", traceParent=TRACE_PARENT, traceState="rojo=00f067aa0ba902b7")
    assert (good["traceParent"], good["traceState"]) == (TRACE_PARENT, "rojo=00f067aa0ba902b7")


async def test_a_bad_traceparent_header_is_ignored(api: Api) -> None:
    """A traceparent header that is not W3C is ignored, as the spec tells a
    receiver to: the task is created without a trace context."""
    body = {"command": "T", "payload": {}}
    status, task, _ = await api.call(
        "POST", TASKS, "producer", body, headers={"traceparent": "zz", "tracestate": "a=b"}
    )
    assert status == 202 and "traceParent" not in task and "traceState" not in task, task
    status, task, _ = await api.call(
        "POST", TASKS, "producer", body, headers={"traceparent": TRACE_PARENT}
    )
    assert status == 202 and task["traceParent"] == TRACE_PARENT


async def test_poison_callbacks_are_abandoned_and_the_dispatcher_goes_on(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    receivers: Callable[[], Awaitable[Receiver]],
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    """Callbacks no delivery can send -- a CR/LF traceParent stored before it was
    checked, a record damaged in the store -- never crash the dispatcher (which
    before crash-looped the daemon): the bad ones are abandoned with their reason
    (GET /admin/callbacks), the good ones are delivered, no actor restarts."""
    receiver = await receivers()
    daemon = await start_daemon(**FAST)
    api = Api(http, daemon.url)
    # Six tasks whose stored traceParent is hostile (as an older codeq let in).
    poisoned = []
    for _ in range(6):
        task = await api.create("P", webhook=receiver.url())
        await redis.hset(keys.task(ACME, task["id"]), "traceParent", HOSTILE_TRACE[0])
        poisoned.append(task["id"])
    # A callback record damaged in the store, due now.
    damaged = "damaged-1:1"
    await redis.hset(
        keys.callback(ACME, damaged),
        mapping={"id": damaged, "taskId": "damaged-1", "url": receiver.url(), "record": "{"},
    )
    await redis.zadd(keys.outbox(ACME), {damaged: 1})
    good = [(await api.create("P", webhook=receiver.url()))["id"] for _ in range(4)]
    for _ in range(10):
        await complete(api, "P")

    async def abandoned() -> list[Any]:
        status, body, _ = await api.call("GET", ADMIN_CALLBACKS, "admin")
        assert status == 200, body
        return list(body["abandoned"])

    await wait_for(lambda: receiver.delivered_task_ids() >= {*poisoned, *good}, 10)
    [entry] = await wait_for(abandoned, 10, message="the damaged callback abandoned")
    assert entry["id"] == damaged and "damaged callback record" in entry["lastError"], entry
    assert all("traceparent" not in r.headers for r in receiver.requests if r.json)
    assert daemon.daemon.supervisor is not None
    assert set(daemon.daemon.supervisor.restarts.values()) == {0}
    assert daemon.daemon.supervisor.healthy()


# ------------------------------------------------------------ hostile bytes


async def raw_request(
    base: str, head: bytes, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Sends bytes an HTTP client library would refuse to send; (status, headers,
    body) of the answer. Fails if the connection closes without one."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        length = b"Content-Length: %d\r\n" % len(body)
        writer.write(head + length + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer, "the connection was closed without an answer"
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode("ascii").split("\r\n")  # a header of raw bytes fails here
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, rest


def head(method: str, path: str, who: str | None = "producer", extra: bytes = b"") -> bytes:
    auth = f"Authorization: Bearer {TOKENS[who][0]}\r\n".encode() if who else b""
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + auth + extra


async def test_control_characters_in_names_get_an_escaped_warning(
    daemon: RunningDaemon, redis: Redis
) -> None:
    """A control character in an unknown body-field or query-parameter name used to
    drop the connection after the work was done: now the answer comes, naming the
    field escaped."""
    body = b'{"command":"CC","payload":{},"x\\r\\nSet-Cookie: a\\u0000":1}'
    status, headers, _ = await raw_request(daemon.url, head("POST", TASKS), body)
    assert status == 202
    assert headers["X-CodeQ-Warning"] == "unknown fields ignored: x\\r\\nSet-Cookie: a\\x00"
    assert "Set-Cookie" not in headers
    claim = b'{"commands":["CC"],"x\\r\\ny":1}'
    status, headers, _ = await raw_request(
        daemon.url, head("POST", f"{TASKS}/claim", "worker"), claim
    )
    assert status == 200 and headers["X-CodeQ-Warning"] == "unknown fields ignored: x\\r\\ny"
    path = "/v1/codeq/admin/queues/CC/dlq?q%0D%0AX-Evil:%201=1"
    status, headers, _ = await raw_request(daemon.url, head("GET", path, "admin"))
    assert status == 200 and "X-Evil" not in headers
    assert headers["X-CodeQ-Warning"] == "unknown query parameters ignored: q\\r\\nX-Evil: 1"


async def test_header_bytes_that_are_not_utf8_are_400_and_change_nothing(
    daemon: RunningDaemon, redis: Redis
) -> None:
    """Header bytes that are not UTF-8 used to be a 500 (for X-Request-Id after the
    task was stored): a 400 naming the header, before anything is done."""
    before = await redis.dbsize()
    body = b'{"command":"HB","payload":{}}'
    for name in (b"X-Request-Id", b"traceparent", b"tracestate", b"X-Lease-Token"):
        status, _, answer = await raw_request(
            daemon.url, head("POST", TASKS, extra=name + b": \xff\xfe\r\n"), body
        )
        assert status == 400 and name.decode().lower() in answer.decode().lower(), answer
    status, _, answer = await raw_request(
        daemon.url, head("POST", TASKS, None, b"Authorization: Bearer \xff\r\n"), body
    )
    assert status == 400 and b"Authorization" in answer, answer
    assert await redis.dbsize() == before
    # An X-Request-Id that is UTF-8 but not a plain token is replaced, not echoed.
    status, headers, _ = await raw_request(
        daemon.url, head("GET", "/healthz", None, "X-Request-Id: caf\u00e9 1\r\n".encode())
    )
    assert status == 200 and len(headers["X-Request-Id"]) == 32


async def test_json_nested_too_deep_is_400_and_changes_nothing(api: Api, redis: Redis) -> None:
    """JSON nested 129-600 levels used to be a 500 (orjson writes at most 254):
    a 400 on create, batch create and result; 128 levels are fine."""

    def nested(depth: int) -> Any:
        value: Any = {}
        for _ in range(depth - 1):
            value = {"n": value}
        return value

    before = await redis.dbsize()
    for depth in (129, 255, 600):
        status, body, _ = await api.call(
            "POST", TASKS, "producer", {"command": "DJ", "payload": nested(depth)}
        )
        assert status == 400 and "deeper than 128" in body["error"], body
        batch = {"tasks": [{"command": "DJ", "payload": nested(depth)}]}
        status, body, _ = await api.call("POST", f"{TASKS}/batch", "producer", batch)
        assert status == 400 and "deeper than 128" in body["error"], body
    assert await redis.dbsize() == before
    task = await api.create("DJ", payload=nested(126))
    claimed = await api.claim(commands=["DJ"])
    assert claimed["id"] == task["id"]
    status, body = await api.result(task["id"], result=nested(300))
    assert status == 400 and "deeper than 128" in body["error"], body
    status, body = await api.result(task["id"], result=nested(120))
    assert status == 200, body
    status, body, _ = await api.call("GET", f"{TASKS}/{task['id']}/result", "producer")
    assert status == 200, body


async def test_a_405_names_the_allowed_methods(api: Api) -> None:
    status, _, headers = await api.call("DELETE", TASKS, "producer")
    assert status == 405 and headers["Allow"] == "POST"
    status, _, headers = await api.call("PUT", f"{TASKS}/abc", "producer")
    assert status == 405 and set(headers["Allow"].split(",")) >= {"GET"}


async def test_client_errors_log_one_warning_and_no_traceback(
    daemon_process: ServeProcess, http: aiohttp.ClientSession
) -> None:
    """Malformed requests from an unauthenticated client used to write an error-level
    traceback each: the client's errors are one warning line (or just the access
    line), never a traceback."""
    await daemon_process.ready(http)
    url = daemon_process.url
    hostile = [
        (b"GARBAGE\r\n", b""),
        (b"GET /v1/codeq/tasks/\xff\xfe HTTP/1.1\r\nHost: x\r\n", b""),
        (b"POST /v1/codeq/tasks HTTP/1.1\r\nHost: x\r\nX-Request-Id: \xff\r\n", b"{}"),
        (head("POST", TASKS, None), b"{not json"),
        (head("POST", TASKS, None, b"Authorization: Bearer nope\r\n"), b"[1,2"),
    ]
    for request_head, body in hostile:
        status, _, _ = await raw_request(url, request_head, body)
        assert status in (400, 401), request_head
    await api_alive(http, url)
    text = daemon_process.log_text()
    assert "Traceback" not in text
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert not [r for r in records if r.get("level") in ("error", "critical")], text
    warnings = [r for r in records if r.get("level") == "warning"]
    assert 1 <= len(warnings) <= len(hostile), warnings


async def api_alive(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url + "/healthz") as resp:
        assert resp.status == 200


# ------------------------------------------------------------ a full store


async def test_a_full_store_is_503_out_of_memory_and_readyz_says_so(
    tmp_path: Path, daemons_on: Callable[..., Awaitable[RunningDaemon]], http: aiohttp.ClientSession
) -> None:
    """Redis at maxmemory with noeviction refuses writes with OOM: creates answer 503
    naming it (was: 500 "internal error"), /readyz says "out of memory",
    and once there is room again the same daemon serves. (KVRocks has no maxmemory:
    a Redis-only case.)"""
    server = start_store("redis", tmp_path)
    try:
        daemon = await daemons_on(server.url)
        api = Api(http, daemon.url)
        await api.create("FULL")
        direct = store_client(server.url)
        await direct.config_set("maxmemory-policy", "noeviction")
        await direct.config_set("maxmemory", "1")  # below what it uses: full
        with pytest.raises(rx.OutOfMemoryError):
            await direct.set("ballast", "x")
        for path, body in (
            (TASKS, {"command": "FULL", "payload": {}}),
            (f"{TASKS}/batch", {"tasks": [{"command": "FULL", "payload": {}}]}),
        ):
            status, answer, _ = await api.call("POST", path, "producer", body)
            assert status == 503 and "out of memory" in answer["error"], (path, answer)
        status, report, _ = await api.call("GET", "/readyz", None)
        assert (status, report["store"]) == (503, "out of memory"), report
        await direct.config_set("maxmemory", "0")
        await direct.aclose()
        await api.create("FULL")
        claimed = await api.claim(commands=["FULL"])
        assert claimed is not None
    finally:
        server.stop()


# ------------------------------------------------------------ slow, idle and many clients


async def _open(
    url: str, first_bytes: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    if first_bytes:
        writer.write(first_bytes)
        await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    """Reads until the server closes the connection (fails after `timeout`)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return b""


async def test_stalled_connections_are_closed_and_others_served(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
) -> None:
    """500 connections that send nothing or half a request line are closed after
    httpHeaderTimeoutSeconds (they used to stay open for good), while a normal
    client is served throughout; the open-connection count goes back to zero."""
    daemon = await start_daemon(http_header_timeout_seconds=0.5)
    stalled = [
        await _open(daemon.url, b"POST /v1/codeq/tasks HTTP/1.1\r\nHo" if i % 2 else b"")
        for i in range(500)
    ]
    await _create_once(daemon.url, "SLOW")
    answers = await asyncio.gather(*(_closed_by_server(reader) for reader, _ in stalled))
    assert answers == [b""] * len(stalled)  # closed without an answer: no request came
    for _, writer in stalled:
        writer.close()
    guard = _http_guard(daemon)
    await wait_for(lambda: guard.open == 0, message="every stalled connection closed")


async def test_idle_keepalive_and_slow_bodies_are_bounded(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
) -> None:
    """A keep-alive connection idle past httpIdleTimeoutSeconds is closed; a body
    that does not arrive within httpBodyTimeoutSeconds gets 408 and creates nothing."""
    daemon = await start_daemon(http_idle_timeout_seconds=0.5, http_body_timeout_seconds=0.5)
    reader, writer = await _open(daemon.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await _closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 200"), answer  # answered, then closed when idle
    writer.close()
    partial = head("POST", TASKS) + b"Content-Length: 100\r\n\r\n" + b'{"command":'
    reader, writer = await _open(daemon.url, partial)
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.close()
    assert daemon.daemon.store is not None
    assert await daemon.daemon.store.tenants() == []  # the create never ran


async def test_the_connection_cap_refuses_the_rest_and_logs_it(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
) -> None:
    """At httpMaxConnections open connections a new one is closed at once (one log
    line, counted); once connections close, new ones are served again. The daemon
    raised its open-file limit to the hard limit at start."""
    daemon = await start_daemon(http_max_connections=20, http_header_timeout_seconds=30)
    held = [await _open(daemon.url) for _ in range(20)]
    guard = _http_guard(daemon)
    await wait_for(lambda: guard.open == 20, message="20 connections open")
    with capture_logs() as logs:
        reader, writer = await _open(daemon.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _closed_by_server(reader) == b""
        writer.close()
        reader, writer = await _open(daemon.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _closed_by_server(reader) == b""
        writer.close()
    assert guard.refused == 2
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "connection limit reached: new connections are closed"
    ]
    for _, held_writer in held:
        held_writer.close()
    await wait_for(lambda: guard.open == 0, message="the held connections closed")
    await _create_once(daemon.url, "CAP")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY


def _http_guard(daemon: RunningDaemon) -> ConnectionGuard:
    transport = next(t for t in daemon.daemon.transports if t.name == "http")
    guard: ConnectionGuard = transport._runner.guard  # type: ignore[attr-defined]
    return guard


async def _create_once(url: str, command: str) -> None:
    """One create on a connection of its own, closed after it."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        await Api(http, url).create(command)


async def test_a_frozen_store_fails_every_waiting_operation_within_a_second(
    own_store: StoreProcess,
    daemons_on: Callable[..., Awaitable[RunningDaemon]],
) -> None:
    """SIGSTOP with 200 creates in flight on a pool of 4: the ones waiting on the
    store and the ones waiting for a connection all answer 503 within about a
    second (the store made no progress for storeTimeoutSeconds), new ones at once;
    after SIGCONT the daemon serves again by itself."""
    daemon = await daemons_on(own_store.url, store_max_connections=4)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        api = Api(http, daemon.url)
        await api.create("ICE")
        body = {"command": "ICE", "payload": {}}
        own_store.freeze()
        try:
            started = asyncio.get_running_loop().time()
            statuses = await _at_once(
                [api.call("POST", TASKS, "producer", body) for _ in range(200)]
            )
            elapsed = asyncio.get_running_loop().time() - started
            assert statuses == {503: 200}, statuses
            # each one alone is under a second (test_stores); 200 at once on 2 cores: 2 s
            assert elapsed < 2.0, f"200 requests took {elapsed:.2f}s to fail"
        finally:
            own_store.thaw()

        async def serves() -> bool:
            status, _, _ = await api.call("POST", TASKS, "producer", body)
            return status == 202

        await wait_for(serves, timeout=10, message="the store back")


async def test_a_fresh_daemon_serves_its_first_requests(
    state_dir: Path, serve: Callable[..., ServeProcess]
) -> None:
    """A `codeq serve` on its embedded store that just started listening serves 8
    concurrent producers' first 200 creates with no 503 (one in ~400 used to be a
    503 in 0.4 ms). Requests start as soon as the port accepts, not after /readyz."""
    daemon = serve(STATE_DIR=str(state_dir))

    async def listening() -> bool:
        assert daemon.proc.poll() is None, daemon.log_text()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        except OSError:
            return False
        writer.close()
        return True

    await wait_for(listening, timeout=20, message="the port listening")
    token = (state_dir / "dev-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    statuses: Counter[int] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def producer() -> None:
            for _ in range(25):
                body = {"command": "FIRST", "payload": {}}
                async with http.post(daemon.url + TASKS, json=body, headers=headers) as resp:
                    statuses[resp.status] += 1

        await asyncio.gather(*(producer() for _ in range(8)))
    assert statuses == {202: 200}, statuses
