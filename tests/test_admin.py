"""The operator's admin API: queue stats, retention cleanup, pause / resume / purge,
the DLQ (listing with a cursor and filters, redrive) and the task history."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import Api, RunningDaemon, wait_for
from redis.asyncio import Redis

import codeq.admin
from codeq.store import keys

TASKS = "/v1/codeq/tasks"
ADMIN = "/v1/codeq/admin"
TAG = keys.tenant_tag("acme")
HOUR_MS = 3_600_000


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def admin(
    api: Api, method: str, path: str, body: Any = None, who: str | None = "admin"
) -> tuple[int, Any]:
    status, data, _ = await api.call(method, ADMIN + path, who, body)
    return status, data


async def post(api: Api, task_id: str, action: str, who: str = "worker", **body: Any) -> Any:
    status, data, _ = await api.call("POST", f"{TASKS}/{task_id}/{action}", who, body)
    assert status == 200, data
    return data


async def claimed(api: Api, command: str, **fields: Any) -> Any:
    task = await api.claim(commands=[command], **fields)
    assert task is not None, f"no {command} task was ready"
    return task


async def completed(api: Api, command: str = "A", **fields: Any) -> str:
    """A task of `command` taken through create, claim and a COMPLETED result."""
    created = await api.create(command, **fields)
    task = await claimed(api, command)
    assert task["id"] == created["id"]
    status, data = await api.result(task["id"])
    assert status == 200, data
    return str(created["id"])


async def dead_lettered(
    api: Api, n: int, command: str = "D", reason: str = "boom", **fields: Any
) -> list[str]:
    """`n` tasks of `command` (whose queue must hold nothing ready) that failed their
    only attempt with `reason` and were dead-lettered, oldest first."""
    ids = []
    for _ in range(n):
        created = await api.create(command, maxAttempts=1, **fields)
        task = await claimed(api, command)
        assert task["id"] == created["id"]
        outcome = await post(api, task["id"], "nack", reason=reason)
        assert outcome["status"] == "dlq"
        ids.append(created["id"])
    return ids


async def backdate(redis: Redis, zset: str, task_ids: list[str], at_ms: int) -> None:
    """Moves tasks' entries in a time-scored index back to `at_ms` (simulated age)."""
    assert await redis.zadd(zset, dict.fromkeys(task_ids, at_ms), xx=True, ch=True) == len(task_ids)


async def dlq_ids(api: Api, command: str = "D", **query: Any) -> list[str]:
    status, data = await admin(api, "GET", f"/queues/{command}/dlq?" + _qs(limit=1000, **query))
    assert status == 200, data
    assert data["nextCursor"] is None
    return [t["id"] for t in data["tasks"]]


def _qs(**query: Any) -> str:
    return "&".join(f"{k}={v}" for k, v in query.items())


async def history(api: Api, task_id: str) -> list[dict[str, Any]]:
    status, data, _ = await api.call("GET", f"{TASKS}/{task_id}/history", "producer")
    assert status == 200, data
    return list(data["history"])


# ------------------------------------------------------------ stats


async def test_queue_stats_match_a_mixed_workload(api: Api) -> None:
    """GET /admin/queues counts ready (all tiers), delayed, in-progress, DLQ and paused
    per command, and GET /admin/queues/{command} gives the same row."""
    await api.create("A", priority=5)
    await claimed(api, "A")
    for priority in (0, 0, 3, 9):
        await api.create("A", priority=priority)
    await api.create("A", delaySeconds=3600)
    await api.create("A", delaySeconds=7200)
    await dead_lettered(api, 1, "B")
    await api.create("B")
    assert (await admin(api, "POST", "/queues/B/pause"))[0] == 200
    assert (await admin(api, "POST", "/queues/C/pause"))[0] == 200

    status, queues = await admin(api, "GET", "/queues")
    assert status == 200, queues
    assert queues == [
        {"command": "A", "ready": 4, "delayed": 2, "inProgress": 1, "dlq": 0, "paused": False},
        {"command": "B", "ready": 1, "delayed": 0, "inProgress": 0, "dlq": 1, "paused": True},
        {"command": "C", "ready": 0, "delayed": 0, "inProgress": 0, "dlq": 0, "paused": True},
    ]
    status, one = await admin(api, "GET", "/queues/A")
    assert (status, one) == (200, queues[0])


async def test_queue_stats_answer_on_codeqs_older_path(api: Api) -> None:
    """GET /admin/queues/{command}/stats (the seed-era Node SDK's getQueueStats)
    answers exactly like GET /admin/queues/{command}, with the same auth."""
    await api.create("A")
    await api.create("A", delaySeconds=60)
    assert await admin(api, "GET", "/queues/A/stats") == await admin(api, "GET", "/queues/A")
    status, _, _ = await api.call("GET", "/v1/codeq/admin/queues/A/stats", "producer")
    assert status == 403


async def test_stats_of_an_unknown_command_are_zeros(api: Api) -> None:
    """An unknown command has zero counts, as codeQ answers."""
    status, stats = await admin(api, "GET", "/queues/NEVER_SEEN")
    assert status == 200
    assert stats == {
        "command": "NEVER_SEEN",
        "ready": 0,
        "delayed": 0,
        "inProgress": 0,
        "dlq": 0,
        "paused": False,
    }


async def test_an_invalid_command_name_is_400(api: Api, redis: Redis) -> None:
    """A command outside the allowed alphabet is a 400 naming the field; nothing changes."""
    for method, path in [
        ("GET", "/queues/bad%20name"),
        ("POST", "/queues/bad%20name/pause"),
        ("POST", "/queues/bad%20name/purge"),
        ("GET", "/queues/bad%20name/dlq"),
    ]:
        status, data = await admin(api, method, path)
        assert (status, data.get("field")) == (400, "command"), (path, data)
    assert not await redis.smembers(keys.paused(TAG))


ADMIN_CALLS = [
    ("GET", "/queues", None),
    ("GET", "/queues/A", None),
    ("POST", "/queues/A/pause", None),
    ("POST", "/queues/A/resume", None),
    ("POST", "/queues/A/purge", None),
    ("GET", "/queues/A/dlq", None),
    ("POST", "/queues/A/dlq/redrive", {"all": True}),
    ("POST", "/tasks/cleanup", {"before": "2999-01-01T00:00:00Z"}),
]


@pytest.mark.parametrize("who", ["producer", "worker"])
async def test_admin_endpoints_need_the_admin_claim(api: Api, redis: Redis, who: str) -> None:
    """Every admin endpoint answers 403 to a token without the admin claim and changes
    nothing."""
    done = await completed(api, "A")
    waiting = await api.create("A")
    for method, path, body in ADMIN_CALLS:
        status, data = await admin(api, method, path, body, who=who)
        assert status == 403, (path, data)
    assert not await redis.smembers(keys.paused(TAG))
    assert (await api.get(done))[0] == 200
    assert (await api.get(waiting["id"]))[0] == 200


async def test_admin_endpoints_need_a_token(api: Api) -> None:
    """Without a bearer token the admin endpoints answer 401."""
    for method, path, body in ADMIN_CALLS:
        status, _ = await admin(api, method, path, body, who=None)
        assert status == 401, path


async def test_an_admin_sees_and_changes_only_its_own_tenant(api: Api) -> None:
    """Another tenant's admin sees only its own queues, and pausing or purging a command
    of the same name leaves the first tenant's queue alone."""
    await api.create("A")
    await api.create("G", who="producer_globex")
    status, queues = await admin(api, "GET", "/queues", who="admin_globex")
    assert status == 200
    assert [q["command"] for q in queues] == ["G"]
    assert (await admin(api, "POST", "/queues/A/pause", who="admin_globex"))[0] == 200
    assert (await admin(api, "POST", "/queues/A/purge", who="admin_globex"))[1] == {"purged": 0}
    _, stats = await admin(api, "GET", "/queues/A")
    assert (stats["ready"], stats["paused"]) == (1, False)
    assert await claimed(api, "A")


# ------------------------------------------------------------ cleanup


async def test_cleanup_removes_exactly_what_is_past_retention(api: Api, redis: Redis) -> None:
    """Cleanup deletes terminal tasks older than `before` with their result, history,
    idempotency key and DLQ entry, and leaves live and recent terminal tasks intact."""
    old_done = await completed(api, "A", idempotencyKey="old-key")
    [old_dead] = await dead_lettered(api, 1)
    old_cancelled = (await api.create("A"))["id"]
    assert (await api.call("POST", f"{TASKS}/{old_cancelled}/cancel", "producer"))[0] == 200
    old = [old_done, old_dead, old_cancelled]
    await backdate(redis, keys.retention(TAG), old, now_ms() - 26 * HOUR_MS)
    recent = await completed(api, "A", idempotencyKey="recent-key")
    pending = (await api.create("A", idempotencyKey="pending-key"))["id"]
    delayed = (await api.create("A", delaySeconds=3600))["id"]
    leased = (await api.create("L"))["id"]
    await claimed(api, "L")

    before = iso(datetime.now(UTC) - timedelta(hours=1))  # retention expired an hour ago
    status, data = await admin(api, "POST", "/tasks/cleanup", {"before": before})
    assert status == 200, data
    assert data["deleted"] == 3
    assert abs(epoch(data["before"]) - epoch(before)) < 0.01
    assert abs(epoch(data["endedBefore"]) - (epoch(before) - 86_400)) < 0.01
    for task_id in old:
        assert (await api.get(task_id))[0] == 404
        assert not await redis.exists(
            keys.task(TAG, task_id), keys.result(TAG, task_id), keys.history(TAG, task_id)
        )
        assert await redis.zscore(keys.retention(TAG), task_id) is None
    assert await redis.zcard(keys.dead_letter(TAG, "D")) == 0
    assert not await redis.exists(keys.idempotency(TAG, "old-key"))
    for task_id in (recent, pending, delayed, leased):
        assert (await api.get(task_id))[0] == 200
    assert await redis.exists(keys.result(TAG, recent))
    assert await redis.exists(keys.idempotency(TAG, "recent-key"))
    assert await redis.exists(keys.idempotency(TAG, "pending-key"))
    assert (await api.create("A", idempotencyKey="old-key"))["id"] != old_done


async def test_cleanup_honours_its_limit(api: Api, redis: Redis) -> None:
    """Cleanup deletes at most `limit` tasks per call, oldest first."""
    ids = [await completed(api, "A") for _ in range(5)]
    for age, task_id in enumerate(ids):
        await backdate(redis, keys.retention(TAG), [task_id], now_ms() - (34 - age) * HOUR_MS)
    body = {"limit": 2, "before": iso(datetime.now(UTC))}
    assert (await admin(api, "POST", "/tasks/cleanup", body))[1]["deleted"] == 2
    assert [(await api.get(i))[0] for i in ids] == [404, 404, 200, 200, 200]
    assert (await admin(api, "POST", "/tasks/cleanup", body))[1]["deleted"] == 2
    assert (await admin(api, "POST", "/tasks/cleanup", body))[1]["deleted"] == 1
    assert (await admin(api, "POST", "/tasks/cleanup", body))[1]["deleted"] == 0


async def test_cleanup_defaults_to_the_retention_period(api: Api, redis: Redis) -> None:
    """Without `before`, cleanup removes what ended more than retentionSeconds (24 h)
    ago and keeps what is younger; `limit` defaults to 1000."""
    expired = await completed(api, "A")
    young = await completed(api, "A")
    await backdate(redis, keys.retention(TAG), [expired], now_ms() - 25 * HOUR_MS)
    await backdate(redis, keys.retention(TAG), [young], now_ms() - 23 * HOUR_MS)
    status, data = await admin(api, "POST", "/tasks/cleanup")
    assert status == 200, data
    assert (data["deleted"], data["limit"]) == (1, 1000)
    assert abs(epoch(data["before"]) - time.time()) < 60
    assert abs(epoch(data["endedBefore"]) - (time.time() - 86_400)) < 60
    assert (await api.get(expired))[0] == 404
    assert (await api.get(young))[0] == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"before": "yesterday"}, "before"),
        ({"before": "2020-01-01T00:00:00"}, "before"),
    ],
)
async def test_cleanup_rejects_bad_input(
    api: Api, redis: Redis, body: dict[str, Any], field: str
) -> None:
    """A bad limit or before is a 400 naming the field, and nothing is deleted."""
    done = await completed(api, "A")
    await backdate(redis, keys.retention(TAG), [done], now_ms() - 48 * HOUR_MS)
    status, data = await admin(api, "POST", "/tasks/cleanup", body)
    assert (status, data["field"]) == (400, field), data
    assert (await api.get(done))[0] == 200


# ------------------------------------------------------------ pause, resume, purge


async def test_pause_stops_claims_and_resume_restores_them(api: Api) -> None:
    """A paused command's tasks are not claimed (204) until it is resumed."""
    created = await api.create("A")
    status, data = await admin(api, "POST", "/queues/A/pause")
    assert (status, data) == (200, {"command": "A", "paused": True})
    assert await api.claim(commands=["A"]) is None
    assert await api.claim() is None
    status, data = await admin(api, "POST", "/queues/A/resume")
    assert (status, data) == (200, {"command": "A", "paused": False})
    assert (await claimed(api, "A"))["id"] == created["id"]


async def test_resume_wakes_a_waiting_claim(api: Api, daemon: RunningDaemon) -> None:
    """A long-poll claim waiting on a paused command gets its task as soon as the
    command is resumed."""
    await admin(api, "POST", "/queues/A/pause")
    created = await api.create("A")
    scheduler = daemon.daemon.service.scheduler  # type: ignore[union-attr]
    waiting = asyncio.create_task(api.claim(commands=["A"], waitSeconds=20))
    await wait_for(lambda: scheduler.waiting() == 1, message="the claim to wait")
    started = time.monotonic()
    await admin(api, "POST", "/queues/A/resume")
    task = await asyncio.wait_for(waiting, 10)
    assert task["id"] == created["id"]
    assert time.monotonic() - started < 5


async def test_purge_empties_ready_and_delayed_only(api: Api, redis: Redis) -> None:
    """Purge deletes ready (every tier) and delayed tasks with their records and
    idempotency keys; in-progress and dead-lettered tasks stay."""
    [dead] = await dead_lettered(api, 1, "A")
    leased = (await api.create("A"))["id"]
    await claimed(api, "A")
    waiting = [(await api.create("A", priority=p, idempotencyKey=f"k{p}"))["id"] for p in (0, 4, 9)]
    waiting += [(await api.create("A", delaySeconds=3600))["id"] for _ in range(2)]

    status, data = await admin(api, "POST", "/queues/A/purge")
    assert (status, data) == (200, {"purged": 5})
    _, stats = await admin(api, "GET", "/queues/A")
    assert (stats["ready"], stats["delayed"], stats["inProgress"], stats["dlq"]) == (0, 0, 1, 1)
    for task_id in waiting:
        assert (await api.get(task_id))[0] == 404
        assert not await redis.exists(keys.history(TAG, task_id))
    for p in (0, 4, 9):
        assert not await redis.exists(keys.idempotency(TAG, f"k{p}"))
    assert (await api.get(dead))[1]["status"] == "FAILED"
    assert (await api.result(leased))[0] == 200


async def test_purge_runs_in_bounded_batches(
    api: Api, monkeypatch: pytest.MonkeyPatch, redis: Redis
) -> None:
    """Purge repeats bounded script calls until the queue is empty."""
    monkeypatch.setattr(codeq.admin, "BATCH", 2)
    for _ in range(5):
        await api.create("A")
    for _ in range(3):
        await api.create("A", delaySeconds=3600)
    assert (await admin(api, "POST", "/queues/A/purge"))[1] == {"purged": 8}
    assert await redis.zcard(keys.delayed(TAG, "A")) == 0
    assert await redis.llen(keys.ready(TAG, "A", 0)) == 0


# ------------------------------------------------------------ the DLQ: listing


async def test_dlq_listing_pages_without_gaps_or_duplicates(api: Api, redis: Redis) -> None:
    """Following nextCursor pages through the DLQ in dead-letter order, with ties on
    the dead-letter time spanning page boundaries, without gaps or duplicates."""
    ids = await dead_lettered(api, 23)
    base = now_ms() - HOUR_MS
    for i, task_id in enumerate(ids):
        await backdate(redis, keys.dead_letter(TAG, "D"), [task_id], base + i // 4)
    expected = await redis.zrange(keys.dead_letter(TAG, "D"), 0, -1)
    seen: list[str] = []
    pages: list[int] = []
    cursor = ""
    while True:
        status, data = await admin(api, "GET", f"/queues/D/dlq?limit=5&cursor={cursor}")
        assert status == 200, data
        seen += [t["id"] for t in data["tasks"]]
        pages.append(len(data["tasks"]))
        if data["nextCursor"] is None:
            break
        cursor = data["nextCursor"]
    assert seen == expected
    assert pages == [5, 5, 5, 5, 3]


async def test_dlq_listing_shows_the_failure(api: Api) -> None:
    """Each listed task carries its dead-letter time, error and last error; the default
    page holds up to 100."""
    before = time.time()
    [task_id] = await dead_lettered(api, 1, reason="S3 timeout")
    status, data = await admin(api, "GET", "/queues/D/dlq")
    assert status == 200
    [task] = data["tasks"]
    assert task["id"] == task_id
    assert (task["status"], task["error"], task["lastError"]) == (
        "FAILED",
        "MAX_ATTEMPTS",
        "S3 timeout",
    )
    assert before - 1 <= epoch(task["deadLetteredAt"]) <= time.time() + 1
    assert data["nextCursor"] is None


async def test_a_dlq_cursor_survives_redrives(api: Api) -> None:
    """Tasks redriven between two pages neither shift nor repeat the next page."""
    ids = await dead_lettered(api, 8)
    status, page = await admin(api, "GET", "/queues/D/dlq?limit=4")
    assert [t["id"] for t in page["tasks"]] == ids[:4]
    await admin(api, "POST", "/queues/D/dlq/redrive", {"ids": [ids[1], ids[5]]})
    status, page2 = await admin(api, "GET", f"/queues/D/dlq?limit=4&cursor={page['nextCursor']}")
    assert status == 200
    assert [t["id"] for t in page2["tasks"]] == [ids[4], ids[6], ids[7]]
    assert page2["nextCursor"] is None


async def test_dlq_listing_filters_by_error_text(api: Api) -> None:
    """error= keeps the tasks whose error text contains it, ignoring case."""
    timeouts = await dead_lettered(api, 3, reason="Timeout talking to S3")
    await dead_lettered(api, 2, reason="bad input")
    assert await dlq_ids(api, error="TIMEOUT") == timeouts
    assert await dlq_ids(api, error="max_attempts") == await dlq_ids(api)
    assert await dlq_ids(api, error="no such text") == []


async def test_dlq_listing_filters_by_age(api: Api, redis: Redis) -> None:
    """olderThanSeconds and newerThanSeconds select by dead-letter time."""
    ids = await dead_lettered(api, 4)
    await backdate(redis, keys.dead_letter(TAG, "D"), ids[:2], now_ms() - 2 * HOUR_MS)
    assert sorted(await dlq_ids(api, olderThanSeconds=3600)) == sorted(ids[:2])
    assert await dlq_ids(api, newerThanSeconds=3600) == ids[2:]
    assert await dlq_ids(api, olderThanSeconds=3 * 3600) == []


async def test_a_selective_filter_pages_through_a_long_dlq(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter that matches few entries still finds them all: a page looks at a
    bounded number of entries and hands back a cursor to go on."""
    monkeypatch.setattr(codeq.admin, "SCAN_BUDGET", 3)
    await dead_lettered(api, 4, reason="noise")
    [needle] = await dead_lettered(api, 1, reason="needle")
    await dead_lettered(api, 4, reason="noise")
    found: list[str] = []
    cursor, calls = "", 0
    while True:
        calls += 1
        status, data = await admin(api, "GET", f"/queues/D/dlq?error=needle&cursor={cursor}")
        assert status == 200, data
        found += [t["id"] for t in data["tasks"]]
        if data["nextCursor"] is None:
            break
        cursor = data["nextCursor"]
    assert found == [needle]
    assert calls >= 3


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("olderThanSeconds=-1", "olderThanSeconds"),
        ("newerThanSeconds=soon", "newerThanSeconds"),
    ],
)
async def test_dlq_listing_rejects_a_bad_query(api: Api, query: str, field: str) -> None:
    """A bad query parameter is a 400 naming it."""
    status, data = await admin(api, "GET", f"/queues/D/dlq?{query}")
    assert (status, data.get("field")) == (400, field), data


# ------------------------------------------------------------ the DLQ: redrive


async def test_redrive_by_ids_moves_tasks_back_and_they_complete(api: Api, redis: Redis) -> None:
    """Redriven tasks are PENDING with attempts reset and no error; unknown ids are
    reported as skipped; the tasks then complete normally."""
    ids = await dead_lettered(api, 3)
    stranger = keys.new_task_id(TAG)
    body = {"ids": [ids[0], ids[2], stranger]}
    status, data = await admin(api, "POST", "/queues/D/dlq/redrive", body)
    assert status == 200, data
    assert data == {"redriven": 2, "ids": [ids[0], ids[2]], "skipped": [stranger], "dryRun": False}
    for task_id in (ids[0], ids[2]):
        task = (await api.get(task_id))[1]
        assert (task["status"], task["attempts"], task["redriveCount"]) == ("PENDING", 0, 1)
        assert "error" not in task and "lastError" not in task
        assert await redis.zscore(keys.retention(TAG), task_id) is None
    assert await dlq_ids(api) == [ids[1]]
    for task_id in (ids[0], ids[2]):
        task = await claimed(api, "D")
        assert task["id"] == task_id and task["attempts"] == 1
        assert (await api.result(task_id))[0] == 200
        assert (await api.get(task_id))[1]["status"] == "COMPLETED"


async def test_redriven_history_keeps_the_lineage(api: Api) -> None:
    """The history of a redriven task shows why it failed, who redrove it and what
    happened next."""
    [task_id] = await dead_lettered(api, 1, reason="db down")
    await admin(api, "POST", "/queues/D/dlq/redrive", {"ids": [task_id]})
    await claimed(api, "D")
    await api.result(task_id)
    entries = await history(api, task_id)
    events = [e["event"] for e in entries]
    assert events == [
        "created",
        "claimed",
        "nacked",
        "dead_lettered",
        "redriven",
        "claimed",
        "completed",
    ]
    redriven = entries[4]
    assert redriven["by"] == "ops-1"
    assert (redriven["previousError"], redriven["lastError"]) == ("MAX_ATTEMPTS", "db down")
    assert (redriven["previousAttempts"], redriven["redriveCount"]) == (1, 1)


async def test_redrive_by_error_filter_moves_only_matching_tasks(api: Api) -> None:
    """{"error": text} moves the dead-lettered tasks whose error contains the text."""
    timeouts = await dead_lettered(api, 2, reason="upstream TIMEOUT")
    others = await dead_lettered(api, 2, reason="bad input")
    status, data = await admin(api, "POST", "/queues/D/dlq/redrive", {"error": "timeout"})
    assert status == 200, data
    assert (data["redriven"], data["ids"]) == (2, timeouts)
    assert await dlq_ids(api) == others


async def test_redrive_all_honours_the_limit(api: Api) -> None:
    """{"all": true} moves the oldest dead-lettered tasks, at most `limit`."""
    ids = await dead_lettered(api, 5)
    status, data = await admin(api, "POST", "/queues/D/dlq/redrive", {"all": True, "limit": 3})
    assert (status, data["ids"]) == (200, ids[:3])
    assert await dlq_ids(api) == ids[3:]
    _, stats = await admin(api, "GET", "/queues/D")
    assert (stats["ready"], stats["dlq"]) == (3, 2)


async def test_redrive_dry_run_changes_nothing(api: Api, redis: Redis) -> None:
    """A dry run reports what would move and leaves tasks, DLQ and history untouched."""
    ids = await dead_lettered(api, 3)

    async def snapshot() -> list[Any]:
        return [
            await redis.zrange(keys.dead_letter(TAG, "D"), 0, -1, withscores=True),
            [await redis.hgetall(keys.task(TAG, i)) for i in ids],
            [await redis.lrange(keys.history(TAG, i), 0, -1) for i in ids],
            await redis.llen(keys.ready(TAG, "D", 0)),
        ]

    before = await snapshot()
    for body in ({"all": True, "dryRun": True}, {"ids": ids[:2], "dryRun": True}):
        status, data = await admin(api, "POST", "/queues/D/dlq/redrive", body)
        assert status == 200, data
        assert data["dryRun"] is True
        assert data["ids"] == (ids if "all" in body else ids[:2])
    assert await snapshot() == before


async def test_redrive_is_paced_by_rate_per_second(api: Api) -> None:
    """ratePerSecond=20 moves 40 tasks over about two seconds, not at once."""
    ids = await dead_lettered(api, 40)
    started = time.monotonic()
    body = {"all": True, "limit": 100, "ratePerSecond": 20}
    status, data = await admin(api, "POST", "/queues/D/dlq/redrive", body)
    elapsed = time.monotonic() - started
    assert status == 200, data
    assert data["redriven"] == 40
    assert sorted(data["ids"]) == sorted(ids)
    assert 1.5 <= elapsed < 10, elapsed
    moved_at = sorted(
        [epoch(e["at"]) for i in ids for e in await history(api, i) if e["event"] == "redriven"]
    )
    assert moved_at[-1] - moved_at[0] >= 1.5


async def test_redrive_wakes_a_waiting_claim(api: Api, daemon: RunningDaemon) -> None:
    """A long-poll claim on the command gets a redriven task at once."""
    [task_id] = await dead_lettered(api, 1)
    scheduler = daemon.daemon.service.scheduler  # type: ignore[union-attr]
    waiting = asyncio.create_task(api.claim(commands=["D"], waitSeconds=20))
    await wait_for(lambda: scheduler.waiting() == 1, message="the claim to wait")
    await admin(api, "POST", "/queues/D/dlq/redrive", {"ids": [task_id]})
    task = await asyncio.wait_for(waiting, 10)
    assert task["id"] == task_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "ids"),
        ({"ids": [keys.new_task_id(TAG)], "all": True}, "all"),
        ({"ids": "not-a-list"}, "ids"),
        ({"ids": []}, "ids"),
        ({"ids": ["not a task id"]}, "ids"),
        ({"all": "yes"}, "all"),
        ({"all": True, "limit": 0}, "limit"),
        ({"all": True, "limit": 10_001}, "limit"),
        ({"all": True, "ratePerSecond": 0}, "ratePerSecond"),
        ({"all": True, "dryRun": "true"}, "dryRun"),
    ],
)
async def test_redrive_rejects_bad_bodies(
    api: Api, redis: Redis, body: dict[str, Any], field: str
) -> None:
    """A bad redrive body is a 400 naming the field, and nothing moves."""
    ids = await dead_lettered(api, 1)
    status, data = await admin(api, "POST", "/queues/D/dlq/redrive", body)
    assert (status, data.get("field")) == (400, field), data
    assert await redis.zrange(keys.dead_letter(TAG, "D"), 0, -1) == ids


# ------------------------------------------------------------ history


async def test_history_tells_why_a_task_is_not_done(api: Api) -> None:
    """A task's history shows its lease expiring (worker, last heartbeat), a nack with
    its reason and its dead-lettering."""
    created = await api.create("H", maxAttempts=2)
    task = await claimed(api, "H", leaseSeconds=1)
    await post(api, task["id"], "heartbeat", extendSeconds=1)

    async def requeued() -> Any:
        return await api.claim(commands=["H"])

    again = await wait_for(requeued, timeout=10, message="the expired task to be claimable")
    outcome = await post(api, again["id"], "nack", reason="db down")
    assert outcome["status"] == "dlq"

    entries = await history(api, created["id"])
    expired = next(e for e in entries if e["event"] == "lease_expired")
    assert expired["worker"] == "worker-1"
    assert "lastHeartbeatAt" in expired and "leaseUntil" in expired
    nacked = next(e for e in entries if e["event"] == "nacked")
    assert nacked["reason"] == "db down"
    assert entries[-1]["event"] == "dead_lettered"
    _, task_now = await api.get(created["id"])
    assert (task_now["status"], task_now["lastError"]) == ("FAILED", "db down")


async def test_cleanup_before_now_keeps_a_result_completed_a_second_ago(
    api: Api, redis: Redis
) -> None:
    """codeQ's `before=now` means "retention expired before now": a task completed a
    second ago is kept, one that ended past the retention period is deleted."""
    fresh = await completed(api, "A")
    expired = await completed(api, "A")
    await backdate(redis, keys.retention(TAG), [expired], now_ms() - 25 * HOUR_MS)
    status, data = await admin(api, "POST", "/tasks/cleanup", {"before": iso(datetime.now(UTC))})
    assert (status, data["deleted"]) == (200, 1), data
    assert (await api.get(fresh))[0] == 200
    assert (await api.get(expired))[0] == 404
