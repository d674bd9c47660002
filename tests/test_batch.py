"""The batch endpoints: POST /tasks/batch, /tasks/claim/batch, /tasks/batch/results --
one store round trip per batch, per-item answers in order, nothing claimed twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from conftest import Api, RunningDaemon, wait_for
from redis.asyncio import Redis

from codeq.store import keys

BATCH = "/v1/codeq/tasks/batch"
CLAIM_BATCH = "/v1/codeq/tasks/claim/batch"
RESULTS = "/v1/codeq/tasks/batch/results"
ACME = keys.tenant_tag("acme")


async def create_batch(api: Api, tasks: list[Any], who: str = "producer") -> list[dict[str, Any]]:
    status, body, _ = await api.call("POST", BATCH, who, {"tasks": tasks})
    assert status == 200, body
    results: list[dict[str, Any]] = body["results"]
    assert len(results) == len(tasks)
    return results


async def claim_batch(api: Api, count: int, who: str = "worker", **fields: Any) -> list[Any]:
    status, body, _ = await api.call("POST", CLAIM_BATCH, who, {"count": count, **fields})
    assert status in (200, 204), body
    return body["tasks"] if status == 200 else []


async def test_batch_create_answers_each_item_in_order(api: Api, redis: Redis) -> None:
    """Good items are created, bad ones get their own error and code, in order."""
    items: list[Any] = [
        {"command": "BA", "payload": {"n": 1}, "priority": 7},
        {"command": "bad command", "payload": {}},
        "not an object",
        {"command": "BA"},
        {"command": "BA", "payload": {}, "webhook": "http://10.0.0.1/hook"},
        {"command": "BA", "payload": {}, "delaySeconds": 3600},
    ]
    results = await create_batch(api, items)
    assert results[0]["task"]["priority"] == 7 and results[0]["task"]["status"] == "PENDING"
    assert (results[1]["code"], results[1]["field"], results[1]["index"]) == (400, "command", 1)
    assert results[2] == {"error": "item 2 must be a JSON object", "code": 400, "index": 2}
    assert results[3]["field"] == "payload"
    assert results[4]["field"] == "webhook" and "refused" in results[4]["error"]
    assert "runAt" in results[5]["task"]
    assert await redis.llen(keys.ready(ACME, "BA", 7)) == 1
    assert await redis.zcard(keys.delayed(ACME, "BA")) == 1
    assert len(await redis.keys(keys.task(ACME, "*"))) == 2


async def test_batch_idempotency_is_per_item(api: Api) -> None:
    """Items sharing an idempotency key make one task, within a batch and across batches."""
    first = await create_batch(
        api,
        [
            {"command": "BI", "payload": {}, "idempotencyKey": "k-1"},
            {"command": "BI", "payload": {}, "idempotencyKey": "k-1"},
            {"command": "BI", "payload": {}, "idempotencyKey": "k-2"},
        ],
    )
    again = await create_batch(api, [{"command": "BI", "payload": {}, "idempotencyKey": "k-2"}])
    ids = [r["task"]["id"] for r in first]
    assert ids[0] == ids[1] != ids[2]
    assert again[0]["task"]["id"] == ids[2]
    single = await api.create("BI", idempotencyKey="k-1")
    assert single["id"] == ids[0]


async def test_batch_bounds_and_shape(api: Api, redis: Redis) -> None:
    """A missing, empty or oversized batch is a 400 naming the field; nothing stored."""
    for body in (
        {},
        {"tasks": []},
        {"tasks": {"command": "X", "payload": {}}},
        {"tasks": [{}] * 1001},
    ):
        status, answer, _ = await api.call("POST", BATCH, "producer", body)
        assert status == 400 and answer["field"] == "tasks", answer
    status, answer, _ = await api.call("POST", CLAIM_BATCH, "worker", {"count": 1001})
    assert status == 400 and answer["field"] == "count"
    status, answer, _ = await api.call("POST", RESULTS, "worker", {"results": []})
    assert status == 400 and answer["field"] == "results"
    assert await redis.keys("*") == []


async def test_batch_unknown_fields_are_named(api: Api) -> None:
    """Unknown fields of the batch and of its items come back in X-CodeQ-Warning."""
    status, _, headers = await api.call(
        "POST",
        BATCH,
        "producer",
        {"tasks": [{"command": "BW", "payload": {}, "delay_seconds": 5}], "extra": 1},
    )
    assert status == 200
    assert headers["X-CodeQ-Warning"] == (
        "unknown fields ignored: extra; unknown fields ignored: tasks[0].delay_seconds"
    )


async def test_batch_auth(api: Api) -> None:
    """Batch endpoints authenticate like their single-task forms."""
    assert (await api.call("POST", BATCH, None, {"tasks": [{"command": "X", "payload": {}}]}))[
        0
    ] == 401
    assert (await api.call("POST", CLAIM_BATCH, "producer", {"count": 2}))[0] == 401
    status, body, _ = await api.call(
        "POST", CLAIM_BATCH, "worker_a_only", {"commands": ["B"], "count": 2}
    )
    assert status == 403, body


async def test_claim_batch_takes_count_in_priority_order(api: Api) -> None:
    """claim/batch leases up to `count` tasks, higher tier first, each with its own token."""
    await create_batch(api, [{"command": "BC", "payload": {}, "priority": p} for p in (1, 5, 1, 9)])
    tasks = await claim_batch(api, 3, commands=["BC"], leaseSeconds=60)
    assert [t["priority"] for t in tasks] == [9, 5, 1]
    assert all(t["status"] == "IN_PROGRESS" and t["workerId"] == "worker-1" for t in tasks)
    assert len({t["leaseToken"] for t in tasks}) == 3
    assert len(await claim_batch(api, 10, commands=["BC"])) == 1
    assert await claim_batch(api, 10, commands=["BC"]) == []


async def test_claim_batch_long_polls(api: Api, daemon: RunningDaemon) -> None:
    """An empty claim/batch waits for work and returns as soon as some is created."""
    waiting = asyncio.create_task(claim_batch(api, 50, commands=["BL"], waitSeconds=10))
    scheduler = daemon.daemon.service.scheduler  # type: ignore[union-attr]
    await wait_for(lambda: scheduler.waiting() == 1, message="the claim waiting")
    await create_batch(api, [{"command": "BL", "payload": {}}] * 3)
    tasks = await asyncio.wait_for(waiting, 5)
    assert 1 <= len(tasks) <= 3


async def test_claim_batch_never_hands_a_task_out_twice(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], http: Any
) -> None:
    """Concurrent batch claimers on two daemons get every task exactly once."""
    one, two = await start_daemon(), await start_daemon()
    apis = [Api(http, one.url), Api(http, two.url)]
    for start in range(0, 2000, 500):
        await create_batch(
            apis[0], [{"command": "BN", "payload": {"i": i}} for i in range(start, start + 500)]
        )
    seen: list[str] = []

    async def claimer(api: Api, who: str) -> None:
        while True:
            tasks = await claim_batch(api, 37, who=who, commands=["BN"])
            if not tasks:
                return
            seen.extend(t["id"] for t in tasks)

    await asyncio.gather(*(claimer(apis[i % 2], ("worker", "worker2")[i % 2]) for i in range(6)))
    assert len(seen) == 2000 and len(set(seen)) == 2000


async def test_batch_results_are_recorded_per_item(api: Api, redis: Redis) -> None:
    """Each result is its own: accepted ones complete, a stale token, a finished task,
    another tenant's id and a bad item are refused without affecting the others."""
    await create_batch(api, [{"command": "BR", "payload": {}}] * 3)
    a, b, c = await claim_batch(api, 3, commands=["BR"])
    other = await api.create("BR", who="producer_globex")
    items = [
        {
            "taskId": a["id"],
            "status": "COMPLETED",
            "result": {"n": 1},
            "leaseToken": a["leaseToken"],
        },
        {"taskId": b["id"], "status": "FAILED", "error": "boom"},
        {"taskId": c["id"], "status": "COMPLETED", "result": {}, "leaseToken": "stale-token"},
        {"taskId": a["id"], "status": "COMPLETED", "result": {}},
        {"taskId": other["id"], "status": "COMPLETED", "result": {}},
        {"taskId": c["id"], "status": "DONE"},
    ]
    status, body, _ = await api.call("POST", RESULTS, "worker", {"results": items})
    assert status == 200
    answers = body["results"]
    assert answers[0]["result"]["result"] == {"n": 1}
    assert answers[1]["result"]["status"] == "FAILED"
    assert answers[2]["code"] == 409 and "stale" in answers[2]["error"]
    assert answers[3]["code"] == 409 and answers[3]["status"] == "COMPLETED"
    assert answers[4] == {"taskId": other["id"], "error": "task not found", "code": 404}
    assert answers[5]["code"] == 400 and answers[5]["taskId"] == c["id"]
    assert [a["taskId"] for a in answers] == [i["taskId"] for i in items]
    assert (await api.get(c["id"]))[1]["status"] == "IN_PROGRESS"
    assert await redis.zcard(keys.in_progress(ACME, "BR")) == 1


async def test_batch_create_is_rate_limited_per_item(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], http: Any
) -> None:
    """A batch spends one create token per item (capped at the burst)."""
    daemon = await start_daemon(rate_limit_create_per_second=0.01, rate_limit_create_burst=10)
    api = Api(http, daemon.url)
    await create_batch(api, [{"command": "RL", "payload": {}}] * 6)
    status, body, headers = await api.call(
        "POST", BATCH, "producer", {"tasks": [{"command": "RL", "payload": {}}] * 6}
    )
    assert status == 429 and int(headers["Retry-After"]) >= 1, body
    assert (
        await api.call("POST", BATCH, "producer", {"tasks": [{"command": "RL", "payload": {}}] * 4})
    )[0] == 200
