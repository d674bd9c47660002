"""Long-poll wake-ups: N parked claims and N tasks made ready are all served at once,
whatever made the tasks ready, oldest waiter first, and one task wakes one claim."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from conftest import Api, RunningDaemon, wait_for

from codeq.actors.scheduler import Scheduler

TASKS = "/v1/codeq/tasks"
ADMIN = "/v1/codeq/admin"
N = 20
# How long a burst may take to reach every parked claim: far below the claims' own
# waitSeconds, so a claim the burst did not reach shows up as still parked.
PROMPT = 5.0


def scheduler_of(daemon: RunningDaemon) -> Scheduler:
    return daemon.daemon.service.scheduler  # type: ignore[union-attr, no-any-return]


async def claim_status(api: Api, command: str, wait_seconds: float) -> tuple[int, Any]:
    status, body, _ = await api.call(
        "POST", f"{TASKS}/claim", "worker", {"commands": [command], "waitSeconds": wait_seconds}
    )
    return status, body


async def park(
    api: Api, daemon: RunningDaemon, n: int, command: str, wait_seconds: float = 10
) -> list[asyncio.Task[tuple[int, Any]]]:
    """`n` claims of `command` parked on `daemon`, started one after another, so the
    list is in arrival order (oldest first)."""
    scheduler = scheduler_of(daemon)
    before = scheduler.waiting()
    claims = []
    for i in range(n):
        claims.append(asyncio.create_task(claim_status(api, command, wait_seconds)))
        await wait_for(lambda i=i: scheduler.waiting() == before + i + 1, message="a parked claim")
    return claims


async def served(claims: list[asyncio.Task[tuple[int, Any]]], timeout: float = PROMPT) -> None:
    """Asserts every claim answered 200 within `timeout` (cancelling the rest)."""
    done, pending = await asyncio.wait(claims, timeout=timeout)
    for claim in pending:
        claim.cancel()
    statuses = [claim.result()[0] for claim in done]
    assert not pending and statuses.count(200) == len(claims), (
        f"{statuses.count(200)} of {len(claims)} parked claims served, "
        f"{statuses.count(204)} got 204, {len(pending)} still parked"
    )


async def create_batch(api: Api, items: list[dict[str, Any]]) -> list[str]:
    tasks = [{"payload": {}, **item} for item in items]
    status, body, _ = await api.call("POST", f"{TASKS}/batch", "producer", {"tasks": tasks})
    assert status == 200, body
    return [item["task"]["id"] for item in body["results"]]


async def admin(api: Api, path: str, body: Any = None) -> Any:
    status, data, _ = await api.call("POST", ADMIN + path, "admin", body)
    assert status == 200, data
    return data


async def test_a_batch_create_serves_every_parked_claim(api: Api, daemon: RunningDaemon) -> None:
    """A batch create of N tasks serves all N parked long-poll claims at once."""
    claims = await park(api, daemon, N, "W")
    await create_batch(api, [{"command": "W"}] * N)
    await served(claims)


async def test_a_redrive_serves_every_parked_claim(api: Api, daemon: RunningDaemon) -> None:
    """A redrive of N dead-lettered tasks serves all N parked claims at once."""
    await create_batch(api, [{"command": "W", "maxAttempts": 1}] * N)
    status, body, _ = await api.call(
        "POST", f"{TASKS}/claim/batch", "worker", {"commands": ["W"], "count": N}
    )
    assert status == 200 and len(body["tasks"]) == N, body
    for task in body["tasks"]:
        status, outcome, _ = await api.call("POST", f"{TASKS}/{task['id']}/nack", "worker", {})
        assert outcome["status"] == "dlq", outcome
    claims = await park(api, daemon, N, "W")
    moved = await admin(api, "/queues/W/dlq/redrive", {"all": True})
    assert len(moved["ids"]) == N, moved
    await served(claims)


async def test_a_resume_serves_every_parked_claim(api: Api, daemon: RunningDaemon) -> None:
    """Resuming a paused queue that holds N tasks serves all N parked claims at once."""
    await admin(api, "/queues/W/pause")
    await create_batch(api, [{"command": "W"}] * N)
    claims = await park(api, daemon, N, "W")
    await admin(api, "/queues/W/resume")
    await served(claims)


async def test_due_delayed_tasks_serve_every_parked_claim(api: Api, daemon: RunningDaemon) -> None:
    """N delayed tasks falling due at once serve all N parked claims at once."""
    claims = await park(api, daemon, N, "W")
    await create_batch(api, [{"command": "W", "delaySeconds": 0.3}] * N)
    await served(claims)


async def test_creates_on_another_daemon_serve_every_parked_claim(
    http: Any, start_daemon: Callable[..., Awaitable[RunningDaemon]]
) -> None:
    """N tasks created through a second daemon on the same store serve all N claims
    parked on the first (wake-ups relayed over the store's ready channel)."""
    first, second = await start_daemon(), await start_daemon()
    claims = await park(Api(http, first.url), first, N, "W")
    await create_batch(Api(http, second.url), [{"command": "W"}] * N)
    await served(claims)


async def test_the_oldest_waiters_are_served_first(api: Api, daemon: RunningDaemon) -> None:
    """With more parked claims than new tasks, the oldest claims get the tasks; the
    younger ones stay parked until their deadline (204)."""
    claims = await park(api, daemon, 10, "W", wait_seconds=3)
    await create_batch(api, [{"command": "W"}] * 4)
    await served(claims[:4], timeout=2.5)
    assert not any(claim.done() for claim in claims[4:]), "a younger claim was answered early"
    assert [(await claim)[0] for claim in claims[4:]] == [204] * 6


async def test_a_single_create_serves_exactly_one_claim(api: Api, daemon: RunningDaemon) -> None:
    """One new task is leased to one of many parked claims; the others stay parked
    until their deadline and get 204."""
    claims = await park(api, daemon, 8, "W", wait_seconds=2)
    await api.create("W")
    statuses = sorted([(await claim)[0] for claim in claims])
    assert statuses == [200] + [204] * 7
