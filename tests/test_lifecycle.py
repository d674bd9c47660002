"""A task's life over the HTTP API: create, claim, result; priorities, delays,
long-polls, nacks, dead-lettering, lease expiry, heartbeats, abandon, history."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import Api, RunningDaemon, wait_for
from redis.asyncio import Redis

from codeq.store import keys

TASKS = "/v1/codeq/tasks"


def epoch(rfc3339: str) -> float:
    """An RFC 3339 timestamp from the wire as epoch seconds."""
    at = datetime.fromisoformat(rfc3339)
    assert at.tzinfo is not None, f"{rfc3339!r} has no time zone"
    return at.timestamp()


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def post(
    api: Api, task_id: str, action: str, who: str = "worker", **body: Any
) -> tuple[int, Any]:
    status, data, _ = await api.call("POST", f"{TASKS}/{task_id}/{action}", who, body)
    return status, data


async def claimed(api: Api, command: str = "A", **fields: Any) -> Any:
    """Claims a task of `command`, failing the test when none is ready."""
    task = await api.claim(commands=[command], **fields)
    assert task is not None, f"no {command} task was ready"
    return task


async def history_events(api: Api, task_id: str) -> list[str]:
    status, data, _ = await api.call("GET", f"{TASKS}/{task_id}/history", "producer")
    assert status == 200, data
    return [entry["event"] for entry in data["history"]]


# ------------------------------------------------------------ the happy path


async def test_create_returns_202_with_codeq_fields(api: Api) -> None:
    """Create answers 202 with codeQ's task fields and the payload as a JSON string."""
    before = time.time()
    status, task, _ = await api.call(
        "POST", TASKS, "producer", {"command": "A", "payload": {"x": 1, "s": "é"}}
    )
    assert status == 202, task
    assert isinstance(task["payload"], str)
    assert json.loads(task["payload"]) == {"x": 1, "s": "é"}
    assert task["command"] == "A"
    assert task["status"] == "PENDING"
    assert task["priority"] == 0
    assert task["attempts"] == 0
    assert task["maxAttempts"] == 5
    assert task["tenantId"] == "acme"
    assert 0 < len(task["id"]) <= 64
    assert abs(epoch(task["createdAt"]) - before) < 5
    assert abs(epoch(task["updatedAt"]) - before) < 5
    assert "leaseToken" not in task and "workerId" not in task


async def test_claim_leases_the_task_to_the_worker(api: Api) -> None:
    """Claim answers 200 with the task IN_PROGRESS, a lease token, the worker id,
    the lease end and attempts=1."""
    created = await api.create("A", payload={"n": 1})
    before = time.time()
    task = await claimed(api, leaseSeconds=30)
    assert task["id"] == created["id"]
    assert task["status"] == "IN_PROGRESS"
    assert task["workerId"] == "worker-1"
    assert task["attempts"] == 1
    assert isinstance(task["leaseToken"], str) and task["leaseToken"]
    assert abs(epoch(task["leaseUntil"]) - (before + 30)) < 5
    assert json.loads(task["payload"]) == {"n": 1}


async def test_full_lifecycle_completes_and_stores_the_result(api: Api) -> None:
    """Create, claim, result: the task is COMPLETED and GET result returns task and result."""
    created = await api.create("A", payload={"n": 2})
    task = await claimed(api)
    status, result = await api.result(task["id"], result={"answer": 42})
    assert status == 200, result
    assert result["taskId"] == created["id"]
    assert result["status"] == "COMPLETED"
    assert result["result"] == {"answer": 42}

    status, stored = await api.get(created["id"])
    assert status == 200, stored
    assert stored["status"] == "COMPLETED"
    assert "leaseUntil" not in stored

    status, both, _ = await api.call("GET", f"{TASKS}/{created['id']}/result", "producer")
    assert status == 200, both
    assert set(both) == {"task", "result"}
    assert both["task"]["id"] == created["id"]
    assert both["task"]["status"] == "COMPLETED"
    assert both["result"]["result"] == {"answer": 42}
    assert both["result"]["status"] == "COMPLETED"
    assert epoch(both["result"]["completedAt"]) >= epoch(created["createdAt"])


async def test_failed_result_marks_the_task_failed(api: Api) -> None:
    """A FAILED result sets the task FAILED with the worker's error."""
    created = await api.create("A")
    await claimed(api)
    status, result = await api.result(created["id"], status="FAILED", result=None, error="boom")
    assert status == 200, result
    status, stored = await api.get(created["id"])
    assert stored["status"] == "FAILED"
    assert stored["error"] == "boom"


async def test_claim_on_empty_queue_returns_204(api: Api) -> None:
    """A claim with nothing ready answers 204 with no body."""
    status, body, _ = await api.call("POST", f"{TASKS}/claim", "worker", {"commands": ["A"]})
    assert status == 204
    assert body is None


# ------------------------------------------------------------ priorities


async def test_higher_tier_first_and_fifo_within_a_tier(api: Api) -> None:
    """Claims take the highest priority tier first, oldest first within a tier."""
    priorities = [0, 5, 9, 5, 0, 9, 3, 5]
    ids = [
        (await api.create("A", priority=p, payload={"i": i}))["id"]
        for i, p in enumerate(priorities)
    ]
    order = []
    while (task := await api.claim(commands=["A"])) is not None:
        order.append(task["id"])
    expected = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-priorities[i], i))]
    assert order == expected


async def test_priority_wins_across_commands(api: Api) -> None:
    """A claim over several commands takes the highest tier among them, whatever the command."""
    low = await api.create("A", priority=1)
    high = await api.create("B", priority=7)
    first = await api.claim(commands=["A", "B"])
    second = await api.claim(commands=["A", "B"])
    assert [first["id"], second["id"]] == [high["id"], low["id"]]


async def test_priority_is_clamped_to_0_9(api: Api) -> None:
    """Priorities outside 0..9 are clamped like codeQ: -5 -> 0, 42 -> 9."""
    low = await api.create("A", priority=-5)
    high = await api.create("A", priority=42)
    assert low["priority"] == 0
    assert high["priority"] == 9
    assert (await api.get(low["id"]))[1]["priority"] == 0
    assert (await api.get(high["id"]))[1]["priority"] == 9


# ------------------------------------------------------------ delayed tasks


async def test_delay_seconds_defers_the_task(api: Api) -> None:
    """A task with delaySeconds is not claimable at once and becomes claimable after."""
    started = time.monotonic()
    created = await api.create("A", delaySeconds=1)
    assert await api.claim(commands=["A"]) is None
    task = await wait_for(
        lambda: api.claim(commands=["A"]), timeout=4, message="the delayed task to become claimable"
    )
    waited = time.monotonic() - started
    assert task["id"] == created["id"]
    assert waited >= 0.9, f"claimable after {waited:.2f}s, before its delay"


async def test_run_at_in_the_past_is_ready_now(api: Api) -> None:
    """A runAt in the past makes the task ready at once."""
    past = iso(datetime.now(UTC) - timedelta(minutes=5))
    created = await api.create("A", runAt=past)
    task = await api.claim(commands=["A"])
    assert task is not None and task["id"] == created["id"]


async def test_run_at_in_the_future_delays_the_task(api: Api, redis: Redis) -> None:
    """A runAt in the future keeps the task delayed until then."""
    future = datetime.now(UTC) + timedelta(minutes=5)
    created = await api.create("A", runAt=iso(future))
    assert await api.claim(commands=["A"]) is None
    assert abs(epoch(created["runAt"]) - future.timestamp()) < 0.01
    tag = keys.tag_of(created["id"])
    score = await redis.zscore(keys.delayed(tag, "A"), created["id"])
    assert score is not None and abs(score / 1000 - future.timestamp()) < 0.01
    _, stored = await api.get(created["id"])
    assert stored["status"] == "PENDING"


async def test_run_at_wins_over_delay_seconds(api: Api) -> None:
    """With both, runAt decides: a past runAt and delaySeconds=60 is ready now."""
    past = iso(datetime.now(UTC) - timedelta(seconds=30))
    created = await api.create("A", runAt=past, delaySeconds=60)
    task = await api.claim(commands=["A"])
    assert task is not None and task["id"] == created["id"]


# ------------------------------------------------------------ long-poll


async def test_long_poll_returns_as_soon_as_a_task_is_ready(
    api: Api, daemon: RunningDaemon
) -> None:
    """A waiting claim (waitSeconds=5) returns the task right after it is created."""
    assert daemon.daemon.service is not None
    scheduler = daemon.daemon.service.scheduler
    body = {"commands": ["A"], "waitSeconds": 5}
    async with asyncio.TaskGroup() as group:
        claim = group.create_task(api.call("POST", f"{TASKS}/claim", "worker", body))
        await wait_for(lambda: scheduler.waiting() == 1, message="the claim to wait")
        started = time.monotonic()
        created = await api.create("A")
        status, task, _ = await claim
        latency = time.monotonic() - started
    print(f"long-poll wake-up: {latency * 1000:.1f} ms from create to claim response")
    assert status == 200, task
    assert task["id"] == created["id"]
    assert latency < 0.5


async def test_long_poll_on_empty_queue_returns_204_at_the_deadline(api: Api) -> None:
    """A claim with waitSeconds=1 and nothing ready answers 204 after about a second."""
    started = time.monotonic()
    status, body, _ = await api.call(
        "POST", f"{TASKS}/claim", "worker", {"commands": ["A"], "waitSeconds": 1}
    )
    waited = time.monotonic() - started
    assert status == 204, body
    assert 0.9 <= waited <= 3.0, f"answered after {waited:.2f}s"


# ------------------------------------------------------------ nack


async def test_nack_delays_by_backoff_then_the_task_is_claimable_again(api: Api) -> None:
    """A nack requeues the task after the backoff delay; the next claim is attempt 2."""
    created = await api.create("A")
    await claimed(api)
    status, body = await post(api, created["id"], "nack", reason="try later")
    assert status == 200, body
    assert body == {"status": "requeued", "delaySeconds": 1}
    status, stored = await api.get(created["id"])
    assert stored["status"] == "PENDING"
    assert stored["attempts"] == 1
    assert "workerId" not in stored
    assert await api.claim(commands=["A"]) is None
    task = await wait_for(
        lambda: api.claim(commands=["A"]), timeout=4, message="the nacked task to be claimable"
    )
    assert task["id"] == created["id"]
    assert task["attempts"] == 2


async def test_nack_delay_override_replaces_the_backoff(api: Api) -> None:
    """A nack's delaySeconds overrides the backoff: 0 makes the task ready at once."""
    created = await api.create("A")
    await claimed(api)
    status, body = await post(api, created["id"], "nack", delaySeconds=0)
    assert status == 200, body
    assert body == {"status": "requeued", "delaySeconds": 0}
    task = await api.claim(commands=["A"])
    assert task is not None and task["id"] == created["id"]
    assert task["attempts"] == 2


async def test_nack_delay_override_is_capped_by_the_backoff_maximum(
    start_daemon: Any, http: Any, redis: Redis
) -> None:
    """A nack's delaySeconds above the backoff maximum is capped to it."""
    running = await start_daemon(backoff_max_seconds=2)
    api = Api(http, running.url)
    created = await api.create("A")
    await claimed(api)
    before_ms = time.time() * 1000
    status, body = await post(api, created["id"], "nack", delaySeconds=600)
    assert status == 200, body
    assert body == {"status": "requeued", "delaySeconds": 2}
    score = await redis.zscore(keys.delayed(keys.tag_of(created["id"]), "A"), created["id"])
    assert score is not None and 1500 <= score - before_ms <= 3000


async def test_nack_at_max_attempts_dead_letters_the_task(api: Api, redis: Redis) -> None:
    """A nack of the last allowed attempt fails the task with MAX_ATTEMPTS into the DLQ."""
    created = await api.create("A", maxAttempts=1)
    await claimed(api)
    status, body = await post(api, created["id"], "nack", reason="hopeless")
    assert status == 200, body
    assert body["status"] != "requeued"
    status, stored = await api.get(created["id"])
    assert stored["status"] == "FAILED"
    assert stored["error"] == "MAX_ATTEMPTS"
    tag = keys.tag_of(created["id"])
    assert keys.dead_letter(tag, "A") == f"cq:{{{tag}}}:dlq:A"
    assert await redis.zscore(keys.dead_letter(tag, "A"), created["id"]) is not None
    assert await redis.zscore(keys.in_progress(tag, "A"), created["id"]) is None
    assert await api.claim(commands=["A"]) is None
    assert "dead_lettered" in await history_events(api, created["id"])


async def test_default_max_attempts_comes_from_the_config(start_daemon: Any, http: Any) -> None:
    """maxAttempts defaults to the configured max_attempts_default."""
    running = await start_daemon(max_attempts_default=2)
    api = Api(http, running.url)
    created = await api.create("A")
    assert created["maxAttempts"] == 2


# ------------------------------------------------------------ leases


async def test_expired_lease_is_requeued_by_the_reaper(api: Api) -> None:
    """A lease that ends without a heartbeat is reaped within ~2 s and counts as an attempt."""
    created = await api.create("A")
    task = await claimed(api, leaseSeconds=1)
    lease_until = epoch(task["leaseUntil"])

    async def requeued() -> Any:
        stored = (await api.get(created["id"]))[1]
        return stored if stored["status"] != "IN_PROGRESS" else None

    stored = await wait_for(requeued, timeout=5, message="the lease to be reaped")
    late = time.time() - lease_until
    assert late < 2.0, f"reaped {late:.2f}s after the lease ended"
    assert stored["status"] == "PENDING"
    assert stored["attempts"] == 1
    assert stored.get("retryReason") == "LEASE_EXPIRED"
    assert "lease_expired" in await history_events(api, created["id"])
    again = await wait_for(
        lambda: api.claim(commands=["A"]), timeout=4, message="the reaped task to be claimable"
    )
    assert again["id"] == created["id"]
    assert again["attempts"] == 2


async def test_heartbeat_extends_the_lease_so_it_is_not_reaped(api: Api) -> None:
    """A heartbeat moves leaseUntil later, so the reaper leaves the task alone."""
    kept = await api.create("HB")
    control = await api.create("CTRL")
    lease = await claimed(api, "HB", leaseSeconds=1)
    await claimed(api, "CTRL", leaseSeconds=1)  # expires after HB's original lease
    status, body = await post(api, kept["id"], "heartbeat", extendSeconds=30)
    assert status == 200, body
    assert body["ok"] is True
    assert epoch(body["leaseUntil"]) > epoch(lease["leaseUntil"]) + 20

    async def control_reaped() -> bool:
        return (await api.get(control["id"]))[1]["status"] != "IN_PROGRESS"

    await wait_for(control_reaped, timeout=5, message="the control lease to be reaped")
    status, stored = await api.get(kept["id"])
    assert stored["status"] == "IN_PROGRESS"
    assert stored["workerId"] == "worker-1"
    assert stored["attempts"] == 1
    assert epoch(stored["leaseUntil"]) == epoch(body["leaseUntil"])


async def test_abandon_requeues_at_once_without_refunding_the_attempt(api: Api) -> None:
    """Abandon puts the task back to ready at once; the next claim is attempt 2."""
    created = await api.create("A")
    await claimed(api)
    status, body = await post(api, created["id"], "abandon")
    assert status == 200, body
    assert body == {"status": "requeued"}
    status, stored = await api.get(created["id"])
    assert stored["status"] == "PENDING"
    task = await api.claim(commands=["A"])
    assert task is not None and task["id"] == created["id"]
    assert task["attempts"] == 2


# ------------------------------------------------------------ history


async def test_history_lists_the_task_transitions(api: Api) -> None:
    """GET history shows created, claimed, nacked, claimed again and completed, in order."""
    created = await api.create("A")
    await claimed(api)
    assert (await post(api, created["id"], "nack", delaySeconds=0, reason="flaky"))[0] == 200
    await claimed(api)
    assert (await api.result(created["id"]))[0] == 200

    status, data, _ = await api.call("GET", f"{TASKS}/{created['id']}/history", "producer")
    assert status == 200, data
    assert data["taskId"] == created["id"]
    events = [entry["event"] for entry in data["history"]]
    assert events[0] == "created"
    assert events[-1] == "completed"
    assert events.count("claimed") == 2
    assert events.index("nacked") < len(events) - 1 - events[::-1].index("claimed")
    nacked = next(e for e in data["history"] if e["event"] == "nacked")
    assert nacked["reason"] == "flaky"
    times = [epoch(entry["at"]) for entry in data["history"]]
    assert times == sorted(times)
