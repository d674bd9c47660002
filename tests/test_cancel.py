"""Cancelling a task (POST /tasks/{id}/cancel): waiting tasks end at once, leased ones
are marked so their holder learns it and ends them."""

from __future__ import annotations

from typing import Any

from conftest import Api, wait_for
from redis.asyncio import Redis

from codeq.store import keys

TASKS = "/v1/codeq/tasks"
TAG = keys.tenant_tag("acme")


async def cancel(api: Api, task_id: str, who: str = "producer", **body: Any) -> tuple[int, Any]:
    status, data, _ = await api.call("POST", f"{TASKS}/{task_id}/cancel", who, body)
    return status, data


async def post(api: Api, task_id: str, action: str, who: str = "worker", **body: Any) -> Any:
    status, data, _ = await api.call("POST", f"{TASKS}/{task_id}/{action}", who, body)
    return status, data


async def leased(api: Api, command: str = "A", **fields: Any) -> Any:
    """A task of `command`, claimed by the worker identity."""
    created = await api.create(command)
    task = await api.claim(commands=[command], **fields)
    assert task is not None and task["id"] == created["id"]
    return task


async def events(api: Api, task_id: str) -> list[dict[str, Any]]:
    status, data, _ = await api.call("GET", f"{TASKS}/{task_id}/history", "producer")
    assert status == 200, data
    return list(data["history"])


async def test_cancel_of_a_pending_task_ends_it(api: Api, redis: Redis) -> None:
    """A ready task is taken out of its queue and answered 200 CANCELLED; no worker
    gets it, and it is indexed for retention."""
    created = await api.create("A", priority=4)
    status, task = await cancel(api, created["id"], reason="not needed")
    assert status == 200, task
    assert task["status"] == "CANCELLED"
    assert await redis.llen(keys.ready(TAG, "A", 4)) == 0
    assert await api.claim(commands=["A"]) is None
    assert await redis.zscore(keys.retention(TAG), created["id"]) is not None
    last = (await events(api, created["id"]))[-1]
    assert (last["event"], last["by"], last["from"], last["reason"]) == (
        "cancelled",
        "svc-a",
        "ready",
        "not needed",
    )


async def test_cancel_of_a_delayed_task_ends_it(api: Api, redis: Redis) -> None:
    """A delayed task leaves the delayed set and is CANCELLED."""
    created = await api.create("A", delaySeconds=3600)
    status, task = await cancel(api, created["id"])
    assert (status, task["status"]) == (200, "CANCELLED")
    assert await redis.zscore(keys.delayed(TAG, "A"), created["id"]) is None
    assert (await events(api, created["id"]))[-1]["from"] == "delayed"


async def test_cancel_of_a_leased_task_is_requested(api: Api) -> None:
    """An IN_PROGRESS task answers 202 cancel_requested and stays with its holder,
    marked cancelRequested."""
    task = await leased(api)
    status, data = await cancel(api, task["id"])
    assert status == 202, data
    assert data["status"] == "cancel_requested"
    _, now = await api.get(task["id"])
    assert (now["status"], now["cancelRequested"], now["workerId"]) == (
        "IN_PROGRESS",
        True,
        "worker-1",
    )
    assert (await events(api, task["id"]))[-1]["event"] == "cancel_requested"


async def test_a_second_cancel_request_changes_nothing(api: Api) -> None:
    """Asking again to cancel a leased task answers 202 and adds no history entry."""
    task = await leased(api)
    await cancel(api, task["id"])
    before = await events(api, task["id"])
    assert (await cancel(api, task["id"]))[0] == 202
    assert await events(api, task["id"]) == before


async def test_heartbeat_of_a_cancel_requested_task_is_409(api: Api) -> None:
    """The holder's next heartbeat gets 409 "task was cancelled" and no extension."""
    task = await leased(api, leaseSeconds=60)
    await cancel(api, task["id"])
    status, data = await post(api, task["id"], "heartbeat", extendSeconds=600)
    assert (status, data["error"]) == (409, "task was cancelled")
    assert (await api.get(task["id"]))[1]["leaseUntil"] == task["leaseUntil"]


async def test_result_of_a_cancel_requested_task_is_409(api: Api, redis: Redis) -> None:
    """A result for a cancel-requested task gets 409 and stores nothing."""
    task = await leased(api)
    await cancel(api, task["id"])
    status, data = await api.result(task["id"])
    assert (status, data["error"]) == (409, "task was cancelled")
    assert not await redis.exists(keys.result(TAG, task["id"]))
    assert (await api.get(task["id"]))[1]["status"] == "IN_PROGRESS"


async def test_nack_of_a_cancel_requested_task_ends_it_cancelled(api: Api) -> None:
    """After learning of the cancel, the holder's nack ends the task CANCELLED instead
    of requeueing it."""
    task = await leased(api)
    await cancel(api, task["id"])
    status, data = await post(api, task["id"], "nack", reason="stopping")
    assert (status, data) == (200, {"status": "cancelled"})
    _, now = await api.get(task["id"])
    assert now["status"] == "CANCELLED"
    assert await api.claim(commands=["A"]) is None
    last = (await events(api, task["id"]))[-1]
    assert (last["event"], last["via"], last["worker"]) == ("cancelled", "nack", "worker-1")


async def test_abandon_of_a_cancel_requested_task_ends_it_cancelled(api: Api) -> None:
    """The holder's abandon of a cancel-requested task ends it CANCELLED."""
    task = await leased(api)
    await cancel(api, task["id"])
    status, data = await post(api, task["id"], "abandon")
    assert (status, data) == (200, {"status": "cancelled"})
    assert (await api.get(task["id"]))[1]["status"] == "CANCELLED"
    assert await api.claim(commands=["A"]) is None


async def test_expired_lease_of_a_cancel_requested_task_ends_it_cancelled(api: Api) -> None:
    """When the holder just stops, the reaper ends the task CANCELLED rather than
    retrying it."""
    task = await leased(api, leaseSeconds=1)
    await cancel(api, task["id"])

    async def cancelled() -> bool:
        return bool((await api.get(task["id"]))[1]["status"] == "CANCELLED")

    await wait_for(cancelled, timeout=10, message="the reaper to end the task")
    assert [e["event"] for e in await events(api, task["id"])][-2:] == [
        "lease_expired",
        "cancelled",
    ]
    assert await api.claim(commands=["A"]) is None


async def test_cancel_of_a_finished_task_is_409_naming_its_status(api: Api) -> None:
    """A COMPLETED or already CANCELLED task cannot be cancelled: 409 with its status."""
    task = await leased(api)
    await api.result(task["id"])
    status, data = await cancel(api, task["id"])
    assert (status, data["status"]) == (409, "COMPLETED")
    assert "COMPLETED" in data["error"]
    waiting = await api.create("A")
    await cancel(api, waiting["id"])
    status, data = await cancel(api, waiting["id"])
    assert (status, data["status"]) == (409, "CANCELLED")


async def test_cancel_of_another_tenants_task_is_404(api: Api) -> None:
    """Another tenant's producer gets 404 and the task is untouched."""
    created = await api.create("A")
    status, _ = await cancel(api, created["id"], who="producer_globex")
    assert status == 404
    assert (await api.get(created["id"]))[1]["status"] == "PENDING"


async def test_cancel_of_an_unknown_or_malformed_id(api: Api) -> None:
    """An unknown task is 404; a malformed id is 400."""
    assert (await cancel(api, keys.new_task_id(TAG)))[0] == 404
    status, data = await cancel(api, "not a task id")
    assert (status, data["field"]) == (400, "id")


async def test_cancel_needs_a_token(api: Api) -> None:
    """Without a bearer token cancel is 401 and the task stays."""
    created = await api.create("A")
    status, _, _ = await api.call("POST", f"{TASKS}/{created['id']}/cancel", None)
    assert status == 401
    assert (await api.get(created["id"]))[1]["status"] == "PENDING"
