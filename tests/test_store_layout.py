"""The store layer: key layout agreement, backoff policies, slot discipline."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis.asyncio import Redis

from codeq.store import keys
from codeq.store.scripts import source

TAG = keys.tenant_tag("acme")


async def run_lib(redis: Redis, body: str, *args: Any) -> Any:
    """Runs a snippet after the shared Lua library, with the tenant prefix as KEYS[1]."""
    lib = source("create").split("-- create:")[0]
    return await redis.eval(lib + "\n" + body, 1, keys.prefix(TAG), *args)


async def test_lua_key_names_match_python(redis: Redis) -> None:
    """lib.lua builds the same key names as codeq/store/keys.py."""
    names = await run_lib(
        redis,
        "return {k_task('x'), k_result('x'), k_hist('x'), k_ready('A', 3), k_inprog('A'),"
        " k_delayed('A'), k_dlq('A'), K_CMDS, K_PAUSED, K_RET, TAG, k_idem('d'),"
        " k_ended('A', 'FAILED')}",
    )
    assert names == [
        keys.task(TAG, "x"),
        keys.result(TAG, "x"),
        keys.history(TAG, "x"),
        keys.ready(TAG, "A", 3),
        keys.in_progress(TAG, "A"),
        keys.delayed(TAG, "A"),
        keys.dead_letter(TAG, "A"),
        keys.commands(TAG),
        keys.paused(TAG),
        keys.retention(TAG),
        TAG,
        keys.idempotency_by_digest(TAG, "d"),
        keys.ended(TAG, "A", "FAILED"),
    ]


@pytest.mark.parametrize(
    ("policy", "attempts", "r", "expected_ms"),
    [
        ("fixed", 3, 0.5, 5000),
        ("linear", 3, 0.5, 15000),
        ("exponential", 1, 0.5, 10000),
        ("exponential", 3, 0.5, 40000),
        ("exponential", 20, 0.5, 900000),  # capped at the maximum
        ("exp_full_jitter", 3, 0.25, 10000),  # random in [0, 40 s]
        ("exp_equal_jitter", 3, 0.5, 30000),  # 20 s + half of the other 20 s
        ("linear", 1000, 0.0, 900000),
    ],
)
async def test_backoff_policies(
    redis: Redis, policy: str, attempts: int, r: float, expected_ms: int
) -> None:
    """Each backoff policy gives codeQ's delay (base 5 s, max 900 s)."""
    delay = await run_lib(
        redis,
        "return backoff(ARGV[1], 5000, 900000, tonumber(ARGV[2]), tonumber(ARGV[3]))",
        policy,
        attempts,
        r,
    )
    assert delay == expected_ms


def test_task_ids_route_to_their_tenant() -> None:
    """A task ID starts with its tenant's tag, is URL-safe and at most 64 characters."""
    task_id = keys.new_task_id(TAG)
    assert keys.tag_of(task_id) == TAG
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", task_id)
    assert keys.tenant_tag("acme") != keys.tenant_tag("globex")


async def test_every_key_of_a_workload_shares_its_tenant_slot(api: Any, redis: Redis) -> None:
    """After a mixed workload, every key but the tenant registry carries a tenant hash tag."""
    await api.create("A", idempotencyKey="k1")
    await api.create("B", delaySeconds=60)
    task = await api.claim(commands=["A"])
    await api.result(task["id"])
    found = [k async for k in redis.scan_iter("*")]
    assert keys.TENANTS in found
    tagged = [k for k in found if k != keys.TENANTS]
    assert tagged and all(k.startswith(f"cq:{{{TAG}}}:") for k in tagged), tagged


async def test_claims_skip_a_paused_queue(api: Any, redis: Redis) -> None:
    """A command in the tenant's paused set is not handed out; others still are."""
    await api.create("A")
    b = await api.create("B")
    await redis.sadd(keys.paused(TAG), "A")
    assert await api.claim(commands=["A"]) is None
    assert (await api.claim())["id"] == b["id"]
    await redis.srem(keys.paused(TAG), "A")
    assert (await api.claim(commands=["A"]))["command"] == "A"
