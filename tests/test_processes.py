"""Real processes and real signals: several daemons on one store, kill -9, a store
outage, the embedded store's child killed, SIGTERM during a long-poll, dev-mode
start and config errors at start."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    LOOPBACK_HEX,
    TOKENS,
    Api,
    RunningDaemon,
    ServeProcess,
    StoreProcess,
    children_of,
    listening_hosts,
    make_config,
    serve_command,
    server_has_read,
    subprocess_env,
    wait_for,
)
from redis.asyncio import Redis

from codeq.daemon import Daemon
from codeq.store import keys

TASKS = "/v1/codeq/tasks"
CLAIM = "/v1/codeq/tasks/claim"
ACME = keys.tenant_tag("acme")
GRACE_SECONDS = 5.0


# ------------------------------------------------------------ store checks


async def statuses(redis: Redis, task_ids: list[str]) -> list[str | None]:
    """Each task's status as the store holds it, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hget(keys.task(keys.tag_of(task_id), task_id), "status")
        return list(await pipe.execute())


async def count_keys(redis: Redis, pattern: str) -> int:
    return len([key async for key in redis.scan_iter(match=pattern, count=1000)])


# ------------------------------------------------------------ 1. replicas


async def test_two_daemons_complete_every_task_exactly_once(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    http: aiohttp.ClientSession,
    redis: Redis,
) -> None:
    """Two daemons on one store: 2,000 tasks, 16 workers, each task claimed and completed once."""
    total, producers, workers_per_daemon = 2000, 20, 8
    apis = [Api(http, (await start_daemon()).url) for _ in range(2)]
    created: list[str] = []
    claims: list[tuple[str, int, str]] = []  # (task id, daemon, identity)
    results: Counter[int] = Counter()
    all_done = asyncio.Event()

    async def produce(first: int) -> None:
        for n in range(first, total, producers):
            task = await apis[n % 2].create("A", payload={"n": n})
            created.append(task["id"])

    async def work(daemon: int, who: str) -> None:
        api = apis[daemon]
        while not all_done.is_set():
            task = await api.claim(who, commands=["A"], leaseSeconds=120, waitSeconds=1)
            if task is None:
                continue
            claims.append((task["id"], daemon, who))
            status, body = await api.result(task["id"], who, leaseToken=task["leaseToken"])
            assert status == 200, body
            results[daemon] += 1
            if results.total() == total:
                all_done.set()

    async with asyncio.timeout(60), asyncio.TaskGroup() as group:
        for index in range(2 * workers_per_daemon):
            group.create_task(work(index % 2, ("worker", "worker2")[index // 2 % 2]))
        for first in range(producers):
            group.create_task(produce(first))

    claimed = Counter(task_id for task_id, _, _ in claims)
    assert len(created) == len(set(created)) == total
    assert set(claimed) == set(created)
    assert max(claimed.values()) == 1, "a task was leased twice"
    assert results[0] > 0 and results[1] > 0, results
    assert {who for _, _, who in claims} == {"worker", "worker2"}
    assert set(await statuses(redis, created)) == {"COMPLETED"}
    assert await count_keys(redis, keys.prefix(ACME) + "res:*") == total


# ------------------------------------------------------------ 2. kill -9


async def test_sigkill_of_a_daemon_loses_no_accepted_task(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    redis: Redis,
    store_url: str,
    tokens_file: Path,
) -> None:
    """kill -9 of one of two daemons mid-run: every accepted task ends COMPLETED exactly once."""
    total, stranded_count = 300, 5
    env = {"REDIS_ADDR": store_url, "BACKOFF_POLICY": "fixed", "BACKOFF_BASE_SECONDS": "0"}
    a = serve("--config", str(tokens_file), **env)
    b = serve("--config", str(tokens_file), **env)
    await a.ready(http)
    await b.ready(http)
    api_a, api_b = Api(http, a.url), Api(http, b.url)

    accepted: dict[int, str] = {}  # producer's idempotency key number -> task id
    acked: Counter[str] = Counter()  # task id -> 200 answers to its result
    unknown: list[str] = []  # results whose answer the crash swallowed
    stranded: list[str] = []  # leased through A just before the kill, never finished
    producers_done, a_killed, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def create(n: int) -> None:
        body = {"command": "A", "idempotencyKey": f"key-{n}", "payload": {"n": n}}
        for api in (api_a, api_b) if n % 2 else (api_b,):
            try:
                status, task, _ = await api.call("POST", TASKS, "producer", body)
            except aiohttp.ClientConnectionError:
                continue  # A is gone: the same key on B tells whether it landed
            assert status == 202, task
            assert accepted.setdefault(n, task["id"]) == task["id"]
            return
        raise AssertionError(f"task {n} was never accepted")

    async def produce() -> None:
        async with asyncio.TaskGroup() as group:
            for first in range(4):
                group.create_task(_each(create, range(first, total, 4)))
        producers_done.set()

    async def work(api: Api) -> None:
        while not finished.is_set():
            # The stranded tasks (command S) wait for the crash; then they are fair game
            # (commands omitted: every command the token allows).
            claim: dict[str, Any] = {"leaseSeconds": 2, "waitSeconds": 1}
            if not a_killed.is_set():
                claim["commands"] = ["A"]
            try:
                status, task, _ = await api.call("POST", CLAIM, "worker", claim)
            except aiohttp.ClientConnectionError:
                api = api_b  # a claim lost with A is reaped when its lease ends
                continue
            if status == 204:
                continue
            assert status == 200, task
            body = {"status": "COMPLETED", "result": {"ok": True}, "leaseToken": task["leaseToken"]}
            try:
                status, reply, _ = await api.call(
                    "POST", f"{TASKS}/{task['id']}/result", "worker", body
                )
            except aiohttp.ClientConnectionError:
                unknown.append(task["id"])
                api = api_b
                continue
            if status == 200:
                acked[task["id"]] += 1
            else:  # the lease ran out and the task was claimed again: a stale token
                assert status == 409, reply

    async def kill_a_mid_way() -> None:
        await wait_for(lambda: acked.total() >= total // 3, timeout=30, message="a third done")
        for n in range(total, total + stranded_count):
            accepted[n] = (await api_a.create("S"))["id"]
            task = await api_a.claim("worker2", commands=["S"], leaseSeconds=2)
            assert task is not None and task["id"] == accepted[n]
            stranded.append(task["id"])
        a.proc.kill()
        assert await a.exited(timeout=10) == -signal.SIGKILL
        a_killed.set()
        for task_id in stranded:
            with pytest.raises(aiohttp.ClientConnectionError):
                await api_a.result(task_id, "worker2")

    async def all_accepted_completed() -> bool:
        if not producers_done.is_set():
            return False
        return set(await statuses(redis, list(accepted.values()))) == {"COMPLETED"}

    async def watch() -> None:
        await wait_for(all_accepted_completed, timeout=45, interval=0.2, message="completion")
        finished.set()

    async with asyncio.timeout(75), asyncio.TaskGroup() as group:
        group.create_task(produce())
        group.create_task(kill_a_mid_way())
        group.create_task(watch())
        for index in range(12):
            group.create_task(work(api_a if index % 2 else api_b))

    ids = list(accepted.values())
    assert len(accepted) == len(set(ids)) == total + stranded_count
    assert set(await statuses(redis, ids)) == {"COMPLETED"}
    assert max(acked.values()) == 1, "a task was completed twice"
    assert set(acked) <= set(ids)
    assert acked.total() + len(unknown) >= len(ids)
    # Exactly one record and one result per accepted task: no duplicate, no loss.
    assert await count_keys(redis, keys.prefix(ACME) + "t:*") == len(ids)
    assert await count_keys(redis, keys.prefix(ACME) + "res:*") == len(ids)
    for task_id in stranded:  # reaped after the crash, then claimed and completed again
        status, task = await api_b.get(task_id)
        assert status == 200 and task["status"] == "COMPLETED", task
        assert task["attempts"] >= 2, task


async def _each(step: Callable[[int], Awaitable[None]], numbers: range) -> None:
    for n in numbers:
        await step(n)


# ------------------------------------------------------------ 3. store outage


async def test_store_outage_answers_503_and_recovers(
    http: aiohttp.ClientSession, own_store: StoreProcess
) -> None:
    """Store down: 503 with a JSON error, fast, daemon alive; store back: work resumes."""
    server = own_store
    daemon = Daemon(make_config(server.url))
    await daemon.start()
    try:
        api = Api(http, daemon.addresses[0])
        before = await api.create("A")
        server.stop()

        calls = {
            "create": ("POST", TASKS, "producer", {"command": "A", "payload": {}}),
            "claim": ("POST", CLAIM, "worker", {"waitSeconds": 0}),
            "get": ("GET", f"{TASKS}/{before['id']}", "producer", None),
        }
        for name, (method, path, who, body) in calls.items():
            started = time.monotonic()
            status, reply, _ = await api.call(method, path, who, body)
            elapsed = time.monotonic() - started
            assert status == 503, (name, status, reply)
            assert isinstance(reply, dict) and reply.get("error"), (name, reply)
            assert elapsed < 3.0, f"{name} took {elapsed:.2f}s to fail"

        assert (await api.call("GET", "/healthz", None))[0] == 200
        status, report, _ = await api.call("GET", "/readyz", None)
        assert status == 503 and report["store"] == "unreachable", report

        server.start()  # same port and data: the daemon's address is unchanged

        async def create_works() -> Any:
            status, task, _ = await api.call(
                "POST", TASKS, "producer", {"command": "B", "payload": {}}
            )
            return task if status == 202 else None

        after = await wait_for(create_works, timeout=15, interval=0.1, message="create again")
        claimed = await api.claim("worker", commands=["B"])
        assert claimed is not None and claimed["id"] == after["id"]
    finally:
        await daemon.stop()
        server.stop()


# ------------------------------------------------------------ 4. embedded store


async def test_killed_embedded_store_is_restarted_with_its_tasks(
    state_dir: Path, serve: Callable[..., ServeProcess], http: aiohttp.ClientSession
) -> None:
    """SIGKILL of the embedded redis-server: the daemon restarts it and the task survives."""
    daemon = serve(STATE_DIR=str(state_dir))
    await daemon.ready(http)
    token = (state_dir / "dev-token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(
        daemon.url + TASKS, json={"command": "A", "payload": {}}, headers=headers
    ) as resp:
        assert resp.status == 202
        task_id = (await resp.json())["id"]

    def in_aof() -> bool:
        return any(
            task_id.encode() in path.read_bytes()
            for path in state_dir.rglob("*.aof*")
            if path.is_file()
        )

    await wait_for(in_aof, timeout=5, message="the task in the AOF")
    started = daemon.events("embedded_redis_started")
    assert len(started) == 1, daemon.log_text()
    old_pid = started[0]["pid"]
    assert old_pid in children_of(daemon.pid)

    os.kill(old_pid, signal.SIGKILL)

    async def task_readable() -> bool:
        try:
            async with http.get(f"{daemon.url}{TASKS}/{task_id}", headers=headers) as resp:
                return resp.status == 200 and (await resp.json())["id"] == task_id
        except aiohttp.ClientError:
            return False

    await wait_for(task_readable, timeout=20, interval=0.1, message="the task after restart")
    await wait_for(lambda: daemon.events("embedded_redis_restarted"), message="the restart log")
    restarted = daemon.events("embedded_redis_restarted")
    assert len(restarted) == 1, daemon.log_text()
    new_pid = restarted[0]["pid"]
    assert new_pid != old_pid
    assert new_pid in children_of(daemon.pid)
    assert daemon.proc.poll() is None


# ------------------------------------------------------------ 5. SIGTERM


async def _send_claim(port: int, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Sends a claim over a raw connection (so its client port is known)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        f"POST {CLAIM} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKENS['worker'][0]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    writer.write(request)
    await writer.drain()
    return reader, writer


async def test_sigterm_ends_a_long_poll_with_204_and_exits_zero(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    tokens_file: Path,
) -> None:
    """SIGTERM during a 20 s long-poll: the claim gets 204 at once, exit 0 within the grace."""
    daemon = serve(
        "--config", str(tokens_file),
        REDIS_ADDR=store_url, SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS),
    )  # fmt: skip
    await daemon.ready(http)
    reader, writer = await _send_claim(daemon.port, b'{"waitSeconds": 20}')
    client_port = writer.get_extra_info("sockname")[1]
    response = asyncio.ensure_future(reader.read())
    try:
        await wait_for(lambda: server_has_read(daemon.port, client_port), timeout=5,
                       message="the daemon reading the claim")  # fmt: skip
        async with http.get(daemon.url + "/readyz") as resp:  # one more turn of its loop
            assert resp.status == 200
        assert not response.done()

        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        raw = await asyncio.wait_for(response, timeout=10)
        answered = time.monotonic() - signalled
    finally:
        response.cancel()
        writer.close()
    assert raw.startswith(b"HTTP/1.1 204"), raw[:200]
    assert answered < 3.0, f"the long-poll ended {answered:.2f}s after SIGTERM"

    assert await daemon.exited(timeout=GRACE_SECONDS + 10) == 0, daemon.log_text()
    assert time.monotonic() - signalled < GRACE_SECONDS
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", daemon.port)


# ------------------------------------------------------------ 6. dev mode


async def test_dev_mode_prints_a_private_token_and_binds_loopback(
    state_dir: Path, serve: Callable[..., ServeProcess], http: aiohttp.ClientSession
) -> None:
    """No auth, no store: the dev token is kept 0600 and works, its file is named in
    the log and the token itself is not (stderr is no terminal: under systemd it is
    the journal); only 127.0.0.1 listens."""
    daemon = serve(STATE_DIR=str(state_dir))
    await daemon.ready(http)
    token_file = state_dir / "dev-token"
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    await wait_for(lambda: f"dev token in {token_file}" in daemon.log_text(), message="the line")
    assert token not in daemon.log_text()
    assert listening_hosts(daemon.port) == {LOOPBACK_HEX}

    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(
        daemon.url + TASKS, json={"command": "A", "payload": {}}, headers=headers
    ) as resp:
        assert resp.status == 202
        created = await resp.json()
    async with http.post(daemon.url + CLAIM, json={}, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == created["id"]


# ------------------------------------------------------------ 7. config errors


def _serve_fails(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Runs `codeq serve` expecting it to refuse to start; returns its stderr."""
    done = subprocess.run(
        serve_command(*args), env=subprocess_env(**env), cwd=cwd,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_unknown_config_key_stops_the_start(tmp_path: Path) -> None:
    """An unknown key in --config: exit non-zero, stderr names the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 0\nbindAdress: 127.0.0.1\n")
    stderr = _serve_fails(["--config", str(bad)], {"STATE_DIR": str(tmp_path)}, tmp_path)
    assert "bindAdress" in stderr


def test_bad_port_variable_stops_the_start(tmp_path: Path) -> None:
    """PORT=abc: exit non-zero, stderr names PORT."""
    stderr = _serve_fails([], {"PORT": "abc", "STATE_DIR": str(tmp_path)}, tmp_path)
    assert "PORT" in stderr and "abc" in stderr
