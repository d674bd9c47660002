"""The janitor: retention applied automatically, in every tenant, bounded per pass,
with an off switch."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from conftest import Api, RunningDaemon, wait_for
from redis.asyncio import Redis

from codeq.actors.janitor import Janitor
from codeq.actors.mover import DelayedMover
from codeq.config import load_config
from codeq.store import keys

ACME = keys.tenant_tag("acme")
GLOBEX = keys.tenant_tag("globex")
Start = Callable[..., Awaitable[RunningDaemon]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def finished(api: Api, command: str = "A", suffix: str = "") -> str:
    """A task taken through create, claim and a COMPLETED result by the given tenant
    (suffix "" = acme, "_globex" = globex)."""
    created = await api.create(command, who=f"producer{suffix}", idempotencyKey=f"k-{command}")
    task = await api.claim(who=f"worker{suffix}", commands=[command])
    assert task is not None and task["id"] == created["id"]
    status, data = await api.result(task["id"], who=f"worker{suffix}")
    assert status == 200, data
    return str(created["id"])


async def age(redis: Redis, tag: str, task_id: str, seconds: int) -> None:
    """Makes a finished task look as if it ended `seconds` ago."""
    at = now_ms() - seconds * 1000
    assert await redis.zadd(keys.retention(tag), {task_id: at}, xx=True, ch=True) == 1


async def test_janitor_removes_old_finished_tasks_and_leaves_live_ones(
    start_daemon: Start, http: aiohttp.ClientSession, redis: Redis
) -> None:
    """With a short interval, tasks finished longer ago than the retention period
    disappear (record, result, history, idempotency key); recent and live ones stay."""
    daemon = await start_daemon(janitor_interval_seconds=0.2, retention_seconds=60)
    api = Api(http, daemon.url)
    old = await finished(api, "OLD")
    recent = await finished(api, "RECENT")
    pending = (await api.create("A"))["id"]
    delayed = (await api.create("A", delaySeconds=3600))["id"]
    await age(redis, ACME, old, 120)

    async def gone() -> bool:
        return not await redis.exists(keys.task(ACME, old))

    await wait_for(gone, timeout=10, message="the janitor to delete the old task")
    assert not await redis.exists(keys.result(ACME, old), keys.history(ACME, old))
    assert not await redis.exists(keys.idempotency(ACME, "k-OLD"))
    for task_id in (recent, pending, delayed):
        assert (await api.get(task_id))[0] == 200
    assert await redis.exists(keys.idempotency(ACME, "k-RECENT"))


async def test_janitor_sweeps_every_tenant(
    start_daemon: Start, http: aiohttp.ClientSession, redis: Redis
) -> None:
    """Old finished tasks of every tenant are removed."""
    daemon = await start_daemon(janitor_interval_seconds=0.2, retention_seconds=60)
    api = Api(http, daemon.url)
    acme = await finished(api)
    globex = await finished(api, suffix="_globex")
    await age(redis, ACME, acme, 120)
    await age(redis, GLOBEX, globex, 120)

    async def both_gone() -> bool:
        return not await redis.exists(keys.task(ACME, acme), keys.task(GLOBEX, globex))

    await wait_for(both_gone, timeout=10, message="the janitor to clean both tenants")


async def test_janitor_off_leaves_old_tasks(
    start_daemon: Start, http: aiohttp.ClientSession, redis: Redis
) -> None:
    """janitorIntervalSeconds 0 runs no janitor: old finished tasks stay while the
    other actors go on sweeping."""
    daemon = await start_daemon(janitor_interval_seconds=0, retention_seconds=60)
    api = Api(http, daemon.url)
    old = await finished(api)
    await age(redis, ACME, old, 120)
    status, report, _ = await api.call("GET", "/readyz", None)
    assert status == 200, report
    assert "janitor" not in report["actors"]
    assert daemon.daemon.supervisor is not None
    [mover] = [a for a in daemon.daemon.supervisor.actors if isinstance(a, DelayedMover)]
    sweeps = mover.sweeps
    await wait_for(lambda: mover.sweeps >= sweeps + 2, timeout=10, message="two mover sweeps")
    assert (await api.get(old))[0] == 200


async def test_a_janitor_pass_is_bounded(daemon: RunningDaemon, api: Api, redis: Redis) -> None:
    """One pass deletes at most max_per_pass tasks per tenant; the next pass goes on."""
    ids = [await finished(api, f"C{i}") for i in range(5)]
    for task_id in ids:
        await age(redis, ACME, task_id, 2 * 86_400)
    store = daemon.daemon.store
    assert store is not None
    janitor = Janitor(store, interval_seconds=60, retention_seconds=86_400, batch=2, max_per_pass=4)
    assert await janitor.sweep(now_ms()) == 4
    assert await janitor.sweep(now_ms()) == 1
    assert await janitor.sweep(now_ms()) == 0
    assert await redis.zcard(keys.retention(ACME)) == 0


def test_janitor_interval_is_configurable() -> None:
    """JANITOR_INTERVAL_SECONDS sets the interval; 60 s by default; 0 is allowed."""
    assert load_config(environ={}).janitor_interval_seconds == 60
    env: dict[str, Any] = {"JANITOR_INTERVAL_SECONDS": "0"}
    assert load_config(environ=env).janitor_interval_seconds == 0
    assert (
        load_config(environ={}, flags={"janitor_interval_seconds": "0.5"}).janitor_interval_seconds
        == 0.5
    )
