"""Tenant and admin claims as newest codeQ reads them (SPEC §6): `tid` first, its
aliases must agree, a malformed or conflicting tenant claim is a 403 that changes
nothing, and the scope `codeq:admin` makes an admin."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from conftest import TOKENS, Api, RunningDaemon
from redis.asyncio import Redis

from codeq.config import StaticToken

TASKS = "/v1/codeq/tasks"
MALFORMED = " must be a non-empty string of at most 128 printable characters"

# token -> claims, beside the usual test identities
CLAIMS: dict[str, dict[str, Any]] = {
    "tid-only-token-000000000001": {"sub": "p-1", "tid": "initech"},
    "tid-agrees-token-0000000001": {"sub": "p-2", "tid": "initech", "tenantId": "initech"},
    "tid-differs-token-000000001": {"sub": "p-3", "tid": "initech", "tenantId": "acme"},
    "aliases-differ-token-000001": {"sub": "p-4", "tenant_id": "acme", "organizationId": "x"},
    "tenant-number-token-0000001": {"sub": "p-5", "tenantId": 42},
    "tenant-empty-token-00000001": {"sub": "p-6", "tenantId": ""},
    "tenant-ctrl-token-000000001": {"sub": "p-7", "tid": "ini\ntech"},
    "scope-admin-token-000000001": {"sub": "ops-s", "tid": "acme", "scope": "codeq:admin"},
}


@pytest.fixture
async def api(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], http: aiohttp.ClientSession
) -> Api:
    tokens = tuple(StaticToken(token=t, claims=c) for t, c in TOKENS.values())
    extra = tuple(StaticToken(token=t, claims=c) for t, c in CLAIMS.items())
    daemon = await start_daemon(static_tokens=tokens + extra)
    return Api(http, daemon.url)


async def call_as(api: Api, token: str, method: str, path: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    return await api.call(method, path, None, body, headers=headers)


async def keys_of(redis: Redis) -> set[str]:
    return {key async for key in redis.scan_iter(count=1000)}


async def test_tid_names_the_tenant(api: Api) -> None:
    """A token with only `tid` creates in that tenant, and agreeing aliases are fine."""
    for token in ("tid-only-token-000000000001", "tid-agrees-token-0000000001"):
        status, task, _ = await call_as(api, token, "POST", TASKS, {"command": "T", "payload": {}})
        assert status == 202, task
        assert task["tenantId"] == "initech"
    status, _, _ = await api.call("GET", f"{TASKS}/{task['id']}", "producer")  # tenant acme
    assert status == 404


@pytest.mark.parametrize(
    ("token", "named"),
    [
        ("tid-differs-token-000000001", "tid, tenantId disagree"),
        ("aliases-differ-token-000001", "tenant_id, organizationId disagree"),
        (
            "tenant-number-token-0000001",
            "tenantId must be a non-empty string of at most 128 printable characters",
        ),
        (
            "tenant-empty-token-00000001",
            "tenantId must be a non-empty string of at most 128 printable characters",
        ),
        (
            "tenant-ctrl-token-000000001",
            "tid must be a non-empty string of at most 128 printable characters",
        ),
    ],
)
async def test_conflicting_or_malformed_tenant_claims_are_403(
    api: Api, redis: Redis, token: str, named: str
) -> None:
    """Tenant claims that disagree or are not a plain string: 403 `invalid tenant
    claims` naming them, on every route, and the store unchanged."""
    before = await keys_of(redis)
    for method, path, body in (
        ("POST", TASKS, {"command": "T", "payload": {}}),
        ("GET", f"{TASKS}/anything", None),
        ("GET", "/v1/codeq/admin/queues", None),
    ):
        status, answer, _ = await call_as(api, token, method, path, body)
        assert status == 403, (path, answer)
        assert answer["error"] == f"invalid tenant claims: {named}", answer
    assert await keys_of(redis) == before


async def test_scope_codeq_admin_is_an_admin(api: Api) -> None:
    """The scope `codeq:admin` opens the admin API, as `role=ADMIN` does."""
    status, body, _ = await call_as(
        api, "scope-admin-token-000000001", "GET", "/v1/codeq/admin/queues"
    )
    assert status == 200, body
    status, body, _ = await call_as(
        api, "tid-only-token-000000000001", "GET", "/v1/codeq/admin/queues"
    )
    assert status == 403, body
