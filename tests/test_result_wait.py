"""GET /tasks/{id}/result?waitSeconds=N long-polls until the task has ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from conftest import Api, RunningDaemon, wait_for


async def result_after(api: Api, task_id: str, wait: float) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, body, _ = await api.call(
        "GET", f"/v1/codeq/tasks/{task_id}/result?waitSeconds={wait}", "producer"
    )
    return status, body, time.monotonic() - started


async def test_waits_until_the_result_is_recorded(api: Api, daemon: RunningDaemon) -> None:
    """A waiting GET returns with the result as soon as the worker reports it."""
    task = await api.create("RW")
    waiting = asyncio.create_task(result_after(api, task["id"], 20))
    service = daemon.daemon.service
    assert service is not None
    await wait_for(lambda: task["id"] in service._result_waiters, message="the waiting GET")
    claimed = await api.claim(commands=["RW"])
    assert (await api.result(claimed["id"], result={"n": 7}))[0] == 200
    status, body, elapsed = await asyncio.wait_for(waiting, 5)
    assert status == 200 and body["result"]["result"] == {"n": 7}
    assert body["task"]["status"] == "COMPLETED"
    assert elapsed < 5


async def test_wait_ends_at_the_deadline(api: Api) -> None:
    """A task that does not end within waitSeconds is a 404 `result not found` at the
    deadline (codeQ's answer), with the task as it is."""
    task = await api.create("RD")
    status, body, elapsed = await result_after(api, task["id"], 0.3)
    assert status == 404 and body["error"] == "result not found"
    assert body["task"]["status"] == "PENDING"
    assert 0.25 <= elapsed < 3


async def test_finished_task_answers_at_once(api: Api) -> None:
    """A task that already ended answers without waiting."""
    task = await api.create("RF")
    claimed = await api.claim(commands=["RF"])
    await api.result(claimed["id"])
    status, body, elapsed = await result_after(api, task["id"], 30)
    assert status == 200 and body["task"]["status"] == "COMPLETED" and elapsed < 2


async def test_result_recorded_by_another_daemon_ends_the_wait(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], http: Any
) -> None:
    """A result recorded through another daemon ends the wait too (within a second)."""
    one, two = await start_daemon(), await start_daemon()
    api_one, api_two = Api(http, one.url), Api(http, two.url)
    task = await api_one.create("RO")
    waiting = asyncio.create_task(result_after(api_one, task["id"], 20))
    service = one.daemon.service
    assert service is not None
    await wait_for(lambda: task["id"] in service._result_waiters, message="the waiting GET")
    claimed = await api_two.claim(commands=["RO"])
    await api_two.result(claimed["id"])
    status, body, elapsed = await asyncio.wait_for(waiting, 5)
    assert status == 200 and body["task"]["status"] == "COMPLETED" and elapsed < 4


async def test_bad_wait_means_no_wait(api: Api) -> None:
    """As codeQ, a waitSeconds that is not a number or ≤ 0 means no wait (a 404 at
    once for a task not ended), named in X-CodeQ-Warning, not a 400."""
    task = await api.create("RB")
    for bad in ("x", "-1", "nan"):
        status, body, headers = await api.call(
            "GET", f"/v1/codeq/tasks/{task['id']}/result?waitSeconds={bad}", "producer"
        )
        assert status == 404 and "waitSeconds" in headers["X-CodeQ-Warning"], (bad, body)
