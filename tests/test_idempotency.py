"""Idempotent creates: one idempotencyKey, one task, even under concurrent duplicates."""

from __future__ import annotations

import asyncio

from conftest import Api
from redis.asyncio import Redis

from codeq.store import keys

TASKS = "/v1/codeq/tasks"


async def task_count(redis: Redis, tenant: str) -> int:
    """How many task records the store holds for a tenant (SCAN, not KEYS)."""
    pattern = f"{keys.prefix(keys.tenant_tag(tenant))}t:*"
    return len([key async for key in redis.scan_iter(match=pattern, count=1000)])


async def ready_ids(redis: Redis, tenant: str, command: str = "A") -> list[str]:
    tag = keys.tenant_tag(tenant)
    ids: list[str] = []
    for tier in range(10):
        ids += await redis.lrange(keys.ready(tag, command, tier), 0, -1)
    return ids


async def test_concurrent_duplicates_create_one_task(api: Api, redis: Redis) -> None:
    """50 concurrent creates with one idempotencyKey all answer the same task, stored once."""
    body = {"command": "A", "payload": {"n": 1}, "idempotencyKey": "order-42"}
    answers = await asyncio.gather(*(api.call("POST", TASKS, "producer", body) for _ in range(50)))
    assert all(status == 202 for status, _, _ in answers), answers
    ids = {task["id"] for _, task, _ in answers}
    assert len(ids) == 1
    (task_id,) = ids
    assert await task_count(redis, "acme") == 1
    assert await ready_ids(redis, "acme") == [task_id]
    assert all(task["idempotencyKey"] == "order-42" for _, task, _ in answers)


async def test_a_different_key_creates_a_new_task(api: Api, redis: Redis) -> None:
    """Another idempotencyKey makes another task."""
    first = await api.create("A", idempotencyKey="order-1")
    again = await api.create("A", idempotencyKey="order-1")
    other = await api.create("A", idempotencyKey="order-2")
    assert again["id"] == first["id"]
    assert other["id"] != first["id"]
    assert await task_count(redis, "acme") == 2


async def test_creates_without_a_key_are_never_merged(api: Api, redis: Redis) -> None:
    """Identical creates without an idempotencyKey each make a task."""
    first = await api.create("A", payload={"same": True})
    second = await api.create("A", payload={"same": True})
    assert first["id"] != second["id"]
    assert await task_count(redis, "acme") == 2


async def test_the_same_key_in_another_tenant_is_independent(api: Api, redis: Redis) -> None:
    """Tenants do not share idempotency keys: the same key makes one task in each."""
    acme = await api.create("A", idempotencyKey="shared-key")
    globex = await api.create("A", who="producer_globex", idempotencyKey="shared-key")
    assert globex["id"] != acme["id"]
    assert globex["tenantId"] == "globex"
    assert await task_count(redis, "acme") == 1
    assert await task_count(redis, "globex") == 1
    replay = await api.create("A", who="producer_globex", idempotencyKey="shared-key")
    assert replay["id"] == globex["id"]


async def test_replay_returns_the_task_as_it_is_now(api: Api, redis: Redis) -> None:
    """A replay after the task was claimed returns it IN_PROGRESS and does not requeue it."""
    created = await api.create("A", idempotencyKey="job-7")
    claimed = await api.claim(commands=["A"])
    assert claimed is not None and claimed["id"] == created["id"]
    replay = await api.create("A", idempotencyKey="job-7", payload={"different": True})
    assert replay["id"] == created["id"]
    assert replay["status"] == "IN_PROGRESS"
    assert replay["payload"] == created["payload"]
    assert "leaseToken" not in replay
    assert await ready_ids(redis, "acme") == []
    assert await api.claim(commands=["A"]) is None
