"""Hardening (issue 11): load past the pool is served, a fault in one item never
stops an actor, hostile bytes get a 4xx, a full store is a 503 that says so.
Every case runs against the real stores."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from conftest import Api, RunningDaemon, wait_for
from redis.asyncio import Redis
from test_callbacks import ACME, ADMIN_CALLBACKS, FAST, Receiver, complete, receivers

from codeq.store import keys

__all__ = ["receivers"]  # the receivers fixture, shared with the callback tests

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
