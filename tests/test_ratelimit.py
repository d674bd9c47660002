"""Per-token rate limits (SPEC §6): token buckets in the store per bearer token and
scope, codeQ's 429, fail-open on store errors, and codeq_rate_limit_hits_total."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from conftest import (
    TOKENS,
    Api,
    RunningDaemon,
    StoreProcess,
    free_port,
    make_config,
    store_client,
    wait_for,
)
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from structlog.testing import capture_logs

from codeq.daemon import Daemon
from codeq.ratelimit import Bucket, RateLimiter, Scope
from codeq.store import keys
from codeq.store.store import Store

TASKS = "/v1/codeq/tasks"
CLAIM = "/v1/codeq/tasks/claim"
ACME = keys.tenant_tag("acme")
NOW = 1_700_000_000_000

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


async def count_keys(redis: Redis, pattern: str) -> int:
    return len([k async for k in redis.scan_iter(pattern)])


async def limited_api(start_daemon: StartDaemon, http: aiohttp.ClientSession, **limits: Any) -> Api:
    return Api(http, (await start_daemon(**limits)).url)


async def create(api: Api, who: str = "producer") -> tuple[int, Any, Any]:
    return await api.call("POST", TASKS, who, {"command": "A", "payload": {}})


def hits(scope: str, operation: str) -> float:
    labels = {"scope": scope, "operation": operation}
    return REGISTRY.get_sample_value("codeq_rate_limit_hits_total", labels) or 0.0


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The store layer on the test store, for scripted times."""
    store = Store(store_client(store_url), origin="test")
    await store.connect()
    yield store
    await store.close()


# ------------------------------------------------------------ over HTTP


async def test_burst_then_429_with_retry_after_and_nothing_created(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis
) -> None:
    """A token gets its burst, then 429 + Retry-After + codeQ's body, creating nothing."""
    api = await limited_api(
        start_daemon, http, rate_limit_create_per_second=0.5, rate_limit_create_burst=3
    )
    for _ in range(3):
        assert (await create(api))[0] == 202
    status, body, headers = await create(api)
    assert status == 429, body
    assert headers["Retry-After"] == "2"  # one token at 0.5/s, rounded up
    assert body == {
        "error": "rate limit exceeded",
        "retryAfterSeconds": 2,
        "scope": "producer",
        "operation": "create_task",
    }
    assert await count_keys(redis, keys.prefix(ACME) + "t:*") == 3


async def test_bucket_refills_at_the_configured_rate(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """A spent bucket lets one request through again after 1/rate seconds, not sooner."""
    api = await limited_api(
        start_daemon, http, rate_limit_create_per_second=2, rate_limit_create_burst=1
    )
    started = time.monotonic()
    assert (await create(api))[0] == 202
    status, _, headers = await create(api)
    assert status == 429 and headers["Retry-After"] == "1"

    async def allowed() -> bool:
        return (await create(api))[0] == 202

    await wait_for(allowed, timeout=5, interval=0.05, message="the bucket to refill")
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 2.0, elapsed
    assert (await create(api))[0] == 429  # one token came back, not a new burst


async def test_buckets_are_per_token(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """Another token keeps its whole burst when one token's bucket is spent."""
    api = await limited_api(
        start_daemon, http, rate_limit_create_per_second=0.5, rate_limit_create_burst=1
    )
    assert (await create(api, "producer"))[0] == 202
    assert (await create(api, "producer"))[0] == 429
    assert (await create(api, "producer_globex"))[0] == 202


async def test_buckets_are_per_scope(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis
) -> None:
    """A token whose create bucket is spent still claims, from a bucket of its own."""
    api = await limited_api(
        start_daemon,
        http,
        allow_producer_as_worker=True,
        rate_limit_create_per_second=0.5,
        rate_limit_create_burst=1,
        rate_limit_claim_per_second=0.5,
        rate_limit_claim_burst=2,
    )
    created = (await create(api))[1]
    assert (await create(api))[0] == 429
    claimed = await api.claim("producer", commands=["A"])
    assert claimed is not None and claimed["id"] == created["id"]
    token = TOKENS["producer"][0]
    assert await redis.exists(keys.rate_limit(token, "create"), keys.rate_limit(token, "claim"))


async def test_limits_are_off_by_default(api: Api, redis: Redis) -> None:
    """With no limit configured, requests never touch a bucket."""
    for _ in range(5):
        assert (await create(api))[0] == 202
    assert await api.claim(commands=["A"]) is not None
    assert await count_keys(redis, keys.RATE_LIMIT_PREFIX + "*") == 0


async def test_unauthenticated_requests_get_401_and_no_bucket(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis
) -> None:
    """A bad or missing token is a 401 (never a 429) and writes no bucket."""
    api = await limited_api(
        start_daemon, http, rate_limit_create_per_second=0.5, rate_limit_create_burst=1
    )
    for headers in ({"Authorization": "Bearer not-a-valid-token-at-all"}, {}):
        for _ in range(3):
            status, _, _ = await api.call(
                "POST", TASKS, None, {"command": "A", "payload": {}}, headers
            )
            assert status == 401
    assert await count_keys(redis, keys.RATE_LIMIT_PREFIX + "*") == 0


async def test_hits_are_counted_in_the_metric(
    start_daemon: StartDaemon, http: aiohttp.ClientSession
) -> None:
    """Each 429 adds one to codeq_rate_limit_hits_total{scope,operation}, shown on /metrics."""
    api = await limited_api(
        start_daemon, http, rate_limit_claim_per_second=0.5, rate_limit_claim_burst=1
    )
    before = hits("worker", "claim")
    assert await api.claim() is None
    for _ in range(2):
        status, _, _ = await api.call("POST", CLAIM, "worker", {})
        assert status == 429
    assert hits("worker", "claim") == before + 2
    async with http.get(api.base + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    line = 'codeq_rate_limit_hits_total{operation="claim",scope="worker"}'
    assert f"{line} {before + 2}" in text, text


async def test_store_down_is_a_503_not_a_429(
    http: aiohttp.ClientSession, own_store: StoreProcess
) -> None:
    """With the store stopped, limited routes answer the store's 503, never a 429."""
    server = own_store
    daemon = Daemon(
        make_config(server.url, rate_limit_create_per_second=0.5, rate_limit_create_burst=1)
    )
    await daemon.start()
    try:
        api = Api(http, daemon.addresses[0])
        assert (await create(api))[0] == 202
        assert (await create(api))[0] == 429
        server.stop()
        for _ in range(3):
            status, body, _ = await create(api)
            assert status == 503, body
    finally:
        await daemon.stop()
        server.stop()


# ------------------------------------------------------------ the limiter and the script


async def test_limiter_fails_open_and_warns_once() -> None:
    """A limiter whose store is unreachable lets requests through and logs one warning."""
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    limiter = RateLimiter(Store(dead, origin="test"), {Scope.CREATE: Bucket(0.5, 1)})
    try:
        with capture_logs() as logs:
            for _ in range(5):
                assert await limiter.check(TOKENS["producer"][0], Scope.CREATE) is None
                await limiter.enforce(TOKENS["producer"][0], Scope.CREATE)
        warnings = [entry for entry in logs if entry["log_level"] == "warning"]
        assert len(warnings) == 1, logs
        assert warnings[0]["scope"] == "create"
    finally:
        await dead.aclose()


async def test_script_refills_by_the_time_it_is_given(store: Store) -> None:
    """The bucket refills by the ARGV time alone: burst, then 1/rate ms per token."""
    take = store.take_tokens
    token = "some-token-for-the-script"
    for _ in range(2):
        assert await take(token, "create", per_second=4, burst=2, now_ms=NOW) is None
    assert await take(token, "create", per_second=4, burst=2, now_ms=NOW) == 250
    assert await take(token, "create", per_second=4, burst=2, now_ms=NOW + 100) == 150
    assert await take(token, "create", per_second=4, burst=2, now_ms=NOW + 250) is None
    # An hour idle refills to the burst, no more.
    later = NOW + 3_600_000
    for _ in range(2):
        assert await take(token, "create", per_second=4, burst=2, now_ms=later) is None
    assert await take(token, "create", per_second=4, burst=2, now_ms=later) is not None


async def test_cost_above_the_burst_passes_on_a_full_bucket_and_leaves_debt(
    store: Store,
) -> None:
    """A batch larger than the burst passes when the bucket is full, then is paid back."""
    token = "batch-token-for-the-script"
    assert (
        await store.take_tokens(token, "create", per_second=1, burst=2, cost=5, now_ms=NOW) is None
    )
    # 2 - 5 = -3 tokens: one token is 4 s away.
    wait = await store.take_tokens(token, "create", per_second=1, burst=2, now_ms=NOW)
    assert wait == 4000


async def test_idle_buckets_expire_after_a_refill(store: Store, redis: Redis) -> None:
    """A bucket's key expires a little after it would be full again."""
    token = "expiring-token-for-the-script"
    await store.take_tokens(token, "claim", per_second=2, burst=4, now_ms=NOW)
    ttl = await redis.pttl(keys.rate_limit(token, "claim"))
    assert 1000 < ttl <= 500 + 1000  # one token back at 2/s, plus a second


def test_bucket_defaults_its_burst_to_one_seconds_worth() -> None:
    """burst 0 means one second's worth (at least one); per_second 0 means no limit."""
    assert Bucket.configured(0, 5) is None
    assert Bucket.configured(10, 0) == Bucket(10, 10)
    assert Bucket.configured(0.2, 0) == Bucket(0.2, 1)
    assert Bucket.configured(10, 3) == Bucket(10, 3)
