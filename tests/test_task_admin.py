"""The operator's task tools: listing a command's tasks by state (cursor-paged over
each state's own index), and ending a stuck lease now (requeue, fail), through the
HTTP API and the `codeq task list|requeue|fail` commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Api, RunningDaemon, wait_for
from redis.asyncio import Redis
from test_callbacks import Receiver
from test_cli import Cli

from codeq.actors.scheduler import Scheduler
from codeq.commands import task as task_commands
from codeq.domain import TaskState
from codeq.store import keys

TASKS = "/v1/codeq/tasks"
ADMIN = "/v1/codeq/admin"
TAG = keys.tenant_tag("acme")
UNKNOWN_ID = f"{TAG}-AAAAAAAAAAAAAAAAAAAAAA"


async def listing(
    api: Api, command: str, status: str, who: str | None = "admin", **query: Any
) -> tuple[int, Any]:
    params = "&".join(f"{k}={v}" for k, v in {"status": status, **query}.items())
    code, body, _ = await api.call("GET", f"{ADMIN}/queues/{command}/tasks?{params}", who)
    return code, body


async def listed_ids(api: Api, command: str, status: str) -> list[str]:
    """Every task of one state, one page (the tests' queues are small)."""
    code, body = await listing(api, command, status, limit=1000)
    assert code == 200, body
    assert body["nextCursor"] is None
    return [t["id"] for t in body["tasks"]]


async def walk(api: Api, command: str, status: str, limit: int) -> list[list[str]]:
    """The ids of every page of a listing, page by page, to its end."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        query: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        code, body = await listing(api, command, status, **query)
        assert code == 200, body
        assert body["command"] == command and body["status"] == status
        pages.append([t["id"] for t in body["tasks"]])
        cursor = body["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 10, "the listing does not end"


async def end_lease(
    api: Api, task_id: str, action: str, who: str = "admin", **body: Any
) -> tuple[int, Any]:
    code, data, _ = await api.call("POST", f"{ADMIN}/tasks/{task_id}/{action}", who, body)
    return code, data


async def create_batch(api: Api, items: list[dict[str, Any]]) -> list[str]:
    tasks = [{"payload": {}, **item} for item in items]
    code, body, _ = await api.call("POST", f"{TASKS}/batch", "producer", {"tasks": tasks})
    assert code == 200, body
    return [item["task"]["id"] for item in body["results"]]


async def claimed(api: Api, command: str, who: str = "worker", **fields: Any) -> Any:
    task = await api.claim(who, commands=[command], **fields)
    assert task is not None, f"no {command} task was ready"
    return task


async def worker_call(
    api: Api, task: Any, action: str, who: str = "worker", **body: Any
) -> tuple[int, Any]:
    """A lease-holder's call, fenced by the lease token of its claim."""
    code, data, _ = await api.call(
        "POST",
        f"{TASKS}/{task['id']}/{action}",
        who,
        body,
        headers={"X-Lease-Token": task["leaseToken"]},
    )
    return code, data


async def history_events(api: Api, task_id: str) -> list[dict[str, Any]]:
    code, body, _ = await api.call("GET", f"{TASKS}/{task_id}/history", "producer")
    assert code == 200, body
    return list(body["history"])


def scheduler_of(daemon: RunningDaemon) -> Scheduler:
    return daemon.daemon.service.scheduler  # type: ignore[union-attr]


# ------------------------------------------------------------ listing


async def test_ready_tasks_page_in_claim_order(api: Api) -> None:
    """25 ready tasks in three priorities list as 3 pages of 10, 10 and 5 with no
    task twice or missed, the last page without a cursor, in the order claims take
    them (higher priority first, oldest first)."""
    ids = await create_batch(api, [{"command": "A", "priority": i % 3} for i in range(25)])
    pages = await walk(api, "A", "ready", limit=10)
    assert [len(page) for page in pages] == [10, 10, 5]
    listed = [task_id for page in pages for task_id in page]
    code, body, _ = await api.call(
        "POST", f"{TASKS}/claim/batch", "worker", {"commands": ["A"], "count": 25}
    )
    assert code == 200, body
    assert listed == [t["id"] for t in body["tasks"]]
    assert sorted(listed) == sorted(ids)


@pytest.mark.parametrize("state", ["delayed", "in_progress", "completed"])
async def test_sorted_states_page_without_gaps(api: Api, state: str) -> None:
    """25 delayed, in-progress or completed tasks list as 3 pages of 10, 10 and 5,
    oldest first by the state's time (run time, lease end, end time), each once."""
    if state == "delayed":
        ids = await create_batch(
            api, [{"command": "A", "delaySeconds": 3600 + i} for i in range(25)]
        )
    else:
        ids = await create_batch(api, [{"command": "A"} for _ in range(25)])
        code, body, _ = await api.call(
            "POST", f"{TASKS}/claim/batch", "worker", {"commands": ["A"], "count": 25}
        )
        assert code == 200 and len(body["tasks"]) == 25, body
        if state == "completed":
            results = [
                {
                    "taskId": t["id"],
                    "status": "COMPLETED",
                    "result": {},
                    "leaseToken": t["leaseToken"],
                }
                for t in body["tasks"]
            ]
            code, answer, _ = await api.call(
                "POST", f"{TASKS}/batch/results", "worker", {"results": results}
            )
            assert code == 200 and all("result" in r for r in answer["results"]), answer
    pages = await walk(api, "A", state, limit=10)
    assert [len(page) for page in pages] == [10, 10, 5]
    listed = [task_id for page in pages for task_id in page]
    assert sorted(listed) == sorted(ids) and len(set(listed)) == 25
    if state == "delayed":
        assert listed == ids  # by run time, which grows with the index


async def test_each_state_lists_its_own_tasks(api: Api) -> None:
    """Each status lists the command's tasks in that state and no other; in-progress
    ones with their worker and lease end; failed ones include dead-lettered ones."""
    done = (await api.create("A"))["id"]
    assert (await claimed(api, "A"))["id"] == done
    assert (await api.result(done))[0] == 200
    failed = (await api.create("A"))["id"]
    assert (await claimed(api, "A"))["id"] == failed
    assert (await api.result(failed, status="FAILED", error="broken", result=None))[0] == 200
    dead = (await api.create("A", maxAttempts=1))["id"]
    assert (await claimed(api, "A"))["id"] == dead
    code, body, _ = await api.call("POST", f"{TASKS}/{dead}/nack", "worker", {"reason": "x"})
    assert code == 200 and body["status"] == "dlq", body
    cancelled = (await api.create("A"))["id"]
    code, body, _ = await api.call("POST", f"{TASKS}/{cancelled}/cancel", "producer", {})
    assert code == 200, body
    await api.create("A")
    running = await claimed(api, "A")
    ready = (await api.create("A"))["id"]
    delayed = (await api.create("A", delaySeconds=3600))["id"]
    await api.create("B")  # another command's task is never listed

    expected = {
        "ready": [ready],
        "delayed": [delayed],
        "in_progress": [running["id"]],
        "completed": [done],
        "failed": [failed, dead],
        "dlq": [dead],
        "cancelled": [cancelled],
    }
    assert set(expected) == {state.value for state in TaskState}
    for status, ids in expected.items():  # (two tasks may end in the same ms: as sets)
        assert sorted(await listed_ids(api, "A", status)) == sorted(ids), status
    code, body = await listing(api, "A", "in_progress")
    [item] = body["tasks"]
    assert item["status"] == "IN_PROGRESS" and item["workerId"] == "worker-1"
    assert item["leaseUntil"] == running["leaseUntil"]
    assert "leaseToken" not in item  # only the claim shows it, to its worker
    code, body = await listing(api, "A", "failed")
    assert {t["id"]: t["error"] for t in body["tasks"]} == {failed: "broken", dead: "MAX_ATTEMPTS"}


async def test_a_ready_walk_goes_on_after_claims_between_pages(api: Api) -> None:
    """Claims between two pages move the ready queue: the next page goes on after the
    last task shown when it is still there, and at the oldest when it was claimed;
    no task that stayed ready is missed."""
    ids = await create_batch(api, [{"command": "A"} for _ in range(30)])
    code, first = await listing(api, "A", "ready", limit=10)
    assert [t["id"] for t in first["tasks"]] == ids[:10]
    for _ in range(3):  # three of the tasks shown leave
        await claimed(api, "A")
    code, second = await listing(api, "A", "ready", limit=10, cursor=first["nextCursor"])
    assert code == 200 and [t["id"] for t in second["tasks"]] == ids[10:20]
    for _ in range(17):  # every task shown leaves, the last one of the page too
        await claimed(api, "A")
    code, third = await listing(api, "A", "ready", limit=10, cursor=second["nextCursor"])
    assert code == 200 and [t["id"] for t in third["tasks"]] == ids[20:30]
    assert third["nextCursor"] is None


async def test_ended_indexes_follow_cleanup_and_redrive(api: Api, redis: Redis) -> None:
    """Retention cleanup takes an ended task out of its listing (and its index); a
    redriven task leaves the failed listing for the ready one."""
    done = (await api.create("A"))["id"]
    assert (await claimed(api, "A"))["id"] == done
    assert (await api.result(done))[0] == 200
    dead = (await api.create("A", maxAttempts=1))["id"]
    assert (await claimed(api, "A"))["id"] == dead
    code, body, _ = await api.call("POST", f"{TASKS}/{dead}/nack", "worker", {"reason": "x"})
    assert code == 200 and body["status"] == "dlq", body

    code, body, _ = await api.call(
        "POST", f"{ADMIN}/queues/A/dlq/redrive", "admin", {"ids": [dead]}
    )
    assert code == 200 and body["ids"] == [dead], body
    assert await listed_ids(api, "A", "failed") == []
    assert await listed_ids(api, "A", "ready") == [dead]

    code, body, _ = await api.call(
        "POST", f"{ADMIN}/tasks/cleanup", "admin", {"before": "9999-01-01T00:00:00Z"}
    )
    assert code == 200 and body["deleted"] == 1, body
    assert await listed_ids(api, "A", "completed") == []
    assert await redis.exists(keys.ended(TAG, "A", "COMPLETED")) == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({}, "status"),
        ({"status": "running"}, "status"),
        ({"status": "READY"}, "status"),
        ({"status": "ready", "limit": "0"}, "limit"),
        ({"status": "ready", "limit": "1001"}, "limit"),
        ({"status": "ready", "limit": "ten"}, "limit"),
        ({"status": "ready", "cursor": "not*a*cursor"}, "cursor"),
        ({"status": "ready", "cursor": "bm90LWEtY3Vyc29y"}, "cursor"),  # base64, not ours
    ],
)
async def test_bad_listing_input_is_a_400_naming_the_field(
    api: Api, query: dict[str, str], field: str
) -> None:
    """A missing or unknown status, a limit outside 1..1000 and a cursor the server
    did not return are each a 400 that names the field."""
    params = "&".join(f"{k}={v}" for k, v in query.items())
    code, body, _ = await api.call("GET", f"{ADMIN}/queues/A/tasks?{params}", "admin")
    assert code == 400 and body["field"] == field, body
    assert field in body["error"]


async def test_listing_needs_an_admin_of_the_tenant(api: Api) -> None:
    """No token is a 401, a producer's or worker's a 403, a bad command a 400; another
    tenant's admin sees none of acme's tasks."""
    await api.create("A")
    assert (await listing(api, "A", "ready", who=None))[0] == 401
    assert (await listing(api, "A", "ready", who="producer"))[0] == 403
    assert (await listing(api, "A", "ready", who="worker"))[0] == 403
    code, body = await listing(api, "A%20B", "ready")
    assert code == 400 and body["field"] == "command", body
    code, body = await listing(api, "A", "ready", who="admin_globex")
    assert code == 200 and body["tasks"] == [] and body["nextCursor"] is None


# ------------------------------------------------------------ requeue and fail


async def test_requeue_puts_the_task_back_and_fences_its_holder(api: Api) -> None:
    """An admin requeue ends the lease now: the task is next in line (attempts kept,
    retryReason ADMIN_REQUEUED), the holder's late heartbeat and result get 409, the
    next claim takes it, and the timeline says who did it and why."""
    created = await api.create("A")
    await api.create("A")  # queued earlier than the requeued task comes back
    held = await claimed(api, "A")
    assert held["id"] == created["id"]
    code, body = await end_lease(api, held["id"], "requeue", reason="worker host died")
    assert code == 200 and body["status"] == "requeued", body
    task = body["task"]
    assert task["status"] == "PENDING" and task["attempts"] == 1
    assert task["retryReason"] == "ADMIN_REQUEUED" and "workerId" not in task

    assert (await worker_call(api, held, "heartbeat"))[0] == 409
    code, body = await worker_call(api, held, "result", status="COMPLETED", result={})
    assert code == 409 and "PENDING" in body["error"], body
    again = await claimed(api, "A", who="worker2")
    assert again["id"] == held["id"] and again["attempts"] == 2  # next in line
    code, body = await worker_call(api, held, "result", status="COMPLETED", result={})
    assert code == 409 and "stale" in body["error"], body

    [entry] = [
        e for e in await history_events(api, held["id"]) if e["event"] == "requeued_by_admin"
    ]
    assert entry["by"] == "ops-1" and entry["worker"] == "worker-1"
    assert entry["reason"] == "worker host died" and entry["attempt"] == 1


async def test_requeue_wakes_a_parked_claim(api: Api, daemon: RunningDaemon) -> None:
    """A claim long-polling on the command gets the requeued task at once."""
    created = await api.create("A")
    held = await claimed(api, "A")
    scheduler = scheduler_of(daemon)
    before = scheduler.waiting()
    parked = asyncio.create_task(
        api.call("POST", f"{TASKS}/claim", "worker2", {"commands": ["A"], "waitSeconds": 20})
    )
    try:
        await wait_for(lambda: scheduler.waiting() == before + 1, message="a parked claim")
        assert (await end_lease(api, held["id"], "requeue"))[0] == 200
        code, body, _ = await asyncio.wait_for(parked, 5)
    finally:
        parked.cancel()
    assert code == 200 and body["id"] == created["id"], body


async def test_requeue_of_a_task_whose_cancel_was_requested_cancels_it(api: Api) -> None:
    """A task its producer asked to cancel ends CANCELLED on an admin requeue, as on
    abandon."""
    created = await api.create("A")
    await claimed(api, "A")
    code, body, _ = await api.call("POST", f"{TASKS}/{created['id']}/cancel", "producer", {})
    assert code == 202, body
    code, body = await end_lease(api, created["id"], "requeue")
    assert code == 200 and body["status"] == "cancelled", body
    assert body["task"]["status"] == "CANCELLED"
    assert await listed_ids(api, "A", "cancelled") == [created["id"]]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


async def test_fail_ends_the_task_failed_with_its_callback(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    http: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    """An admin fail ends the lease now as a FAILED result would: error "failed by
    admin: <reason>", the result readable, the webhook called, the end on the
    timeline and in the failed listing (not the DLQ); the holder's late result,
    heartbeat and nack get 409."""
    daemon = await start_daemon(webhook_allowed_hosts=("127.0.0.1",))
    api = Api(http, daemon.url)
    hook = receiver.url()
    created = await api.create("A", webhook=hook)
    held = await claimed(api, "A")
    code, body = await end_lease(api, held["id"], "fail", reason="poison payload")
    assert code == 200 and body["status"] == "failed", body
    assert body["task"]["status"] == "FAILED"
    assert body["task"]["error"] == "failed by admin: poison payload"

    code, answer, _ = await api.call("GET", f"{TASKS}/{created['id']}/result", "producer")
    assert code == 200, answer
    assert answer["result"]["status"] == "FAILED"
    assert answer["result"]["error"] == "failed by admin: poison payload"
    await wait_for(receiver.delivered, message="the result callback")
    [callback] = [r.json for r in receiver.delivered()]
    assert callback["taskId"] == created["id"] and callback["status"] == "FAILED"
    assert callback["error"] == "failed by admin: poison payload"

    late: tuple[tuple[str, dict[str, Any]], ...] = (
        ("result", {"status": "COMPLETED", "result": {}}),
        ("heartbeat", {}),
        ("nack", {}),
    )
    for action, fields in late:
        code, body = await worker_call(api, held, action, **fields)
        assert code == 409 and "FAILED" in body["error"], (action, body)
    events = [e["event"] for e in await history_events(api, created["id"])]
    assert events[-1] == "failed_by_admin"
    assert await listed_ids(api, "A", "failed") == [created["id"]]
    assert await listed_ids(api, "A", "dlq") == []


@pytest.mark.parametrize("action", ["requeue", "fail"])
async def test_ending_a_lease_needs_an_in_progress_task_of_the_tenant(
    api: Api, action: str
) -> None:
    """A task not IN_PROGRESS is a 409 naming its status; an unknown task or another
    tenant's is a 404; a producer's or worker's token is a 403; a long reason a 400."""
    pending = (await api.create("A"))["id"]
    code, body = await end_lease(api, pending, action)
    assert code == 409 and body["status"] == "PENDING" and "PENDING" in body["error"], body
    await claimed(api, "A")
    assert (await api.result(pending))[0] == 200
    code, body = await end_lease(api, pending, action)
    assert code == 409 and body["status"] == "COMPLETED", body

    other = (await api.create("A"))["id"]
    await claimed(api, "A")
    assert (await end_lease(api, UNKNOWN_ID, action))[0] == 404
    assert (await end_lease(api, other, action, who="admin_globex"))[0] == 404
    assert (await end_lease(api, other, action, who="producer"))[0] == 403
    assert (await end_lease(api, other, action, who="worker"))[0] == 403
    code, body = await end_lease(api, other, action, reason="x" * 1025)
    assert code == 400 and body["field"] == "reason", body
    code, task = await api.get(other)
    assert task["status"] == "IN_PROGRESS"  # none of these changed anything


# ------------------------------------------------------------ the CLI


def test_cli_states_are_the_apis() -> None:
    """`codeq task list --status` offers exactly the API's states."""
    assert tuple(state.value for state in TaskState) == task_commands.STATES
    assert set(task_commands.LIST_COLUMNS) == set(task_commands.STATES)


@pytest.fixture
def codeq(daemon: RunningDaemon, tmp_path: Path) -> Cli:
    return Cli(daemon, tmp_path)


async def test_cli_task_list(codeq: Cli, api: Api) -> None:
    """`codeq task list` shows a state's tasks as a table or as the API's JSON, every
    page with --all; a bad --status is a usage error (exit 2)."""
    ids = await create_batch(api, [{"command": "A"} for _ in range(3)])
    held = await claimed(api, "A")

    done = await codeq("task", "list", "A", "--status", "ready", "--limit", "1", "--all",
                       "--json", who="admin")  # fmt: skip
    assert done.code == 0, done.err
    assert [t["id"] for t in done.json()["tasks"]] == ids[1:]
    assert done.json()["nextCursor"] is None

    table = await codeq("task", "list", "A", "--status", "in_progress", who="admin")
    assert table.code == 0, table.err
    assert held["id"] in table.out and "worker-1" in table.out
    assert "1 in_progress task(s) of A" in table.err

    bad = await codeq("task", "list", "A", "--status", "running", who="admin")
    assert bad.code == 2 and "running" in bad.err


async def test_cli_task_requeue_and_fail(codeq: Cli, api: Api) -> None:
    """`codeq task requeue` puts a held task back; `codeq task fail --reason` ends one
    FAILED; a task not in progress is one line and exit 1; a producer token too."""
    first, second = await create_batch(api, [{"command": "A"}, {"command": "A"}])
    assert (await claimed(api, "A"))["id"] == first
    requeued = await codeq("task", "requeue", first, "--json", who="admin")
    assert requeued.code == 0, requeued.err
    assert requeued.json()["status"] == "requeued"
    assert (await api.get(first))[1]["status"] == "PENDING"

    assert (await claimed(api, "A"))["id"] == first
    failed = await codeq("task", "fail", first, "--reason", "stuck for hours", who="admin")
    assert failed.code == 0, failed.err
    assert "failed by admin: stuck for hours" in failed.out
    assert (await api.get(first))[1]["status"] == "FAILED"

    again = await codeq("task", "fail", first, "--reason", "twice", who="admin")
    assert again.code == 1 and "FAILED" in again.err and "Traceback" not in again.err
    refused = await codeq("task", "requeue", second, who="producer")
    assert refused.code == 1 and "admin" in refused.err
