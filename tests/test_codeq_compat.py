"""A codeQ deployment's own settings start codeq unchanged (issue 12): its static
provider configs from the environment, as codeQ's local compose sets them."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from conftest import ServeProcess

PRODUCER = (
    '{"token":"dev-token","subject":"producer-dev","raw":{"role":"ADMIN","tenantId":"dev-tenant"}}'
)
WORKER = (
    '{"token":"dev-token","subject":"worker-dev","scopes":["codeq:claim","codeq:heartbeat",'
    '"codeq:abandon","codeq:nack","codeq:result","codeq:subscribe"],"eventTypes":["*"],'
    '"raw":{"tenantId":"dev-tenant"}}'
)


async def test_codeq_compose_environment_serves_its_dev_token(
    store_url: str, serve: Callable[..., ServeProcess], http: aiohttp.ClientSession
) -> None:
    """`codeq serve` with codeQ's PRODUCER_/WORKER_AUTH_PROVIDER=static and
    *_AUTH_CONFIG JSON: its short `dev-token` creates, claims and completes a task in
    tenant dev-tenant, with one warning naming the short token's subject."""
    child = serve(
        REDIS_ADDR=store_url,
        PRODUCER_AUTH_PROVIDER="static",
        PRODUCER_AUTH_CONFIG=PRODUCER,
        WORKER_AUTH_PROVIDER="static",
        WORKER_AUTH_CONFIG=WORKER,
    )
    await child.ready(http)
    base = f"{child.url}/v1/codeq"
    auth = {"Authorization": "Bearer dev-token"}
    async with http.post(f"{base}/tasks", json={"command": "A", "payload": {}}, headers=auth) as r:
        assert r.status == 202, await r.text()
        task = await r.json()
    assert task["tenantId"] == "dev-tenant"
    async with http.post(f"{base}/tasks/claim", json={"commands": ["A"]}, headers=auth) as r:
        assert r.status == 200, await r.text()
        claimed = await r.json()
    assert claimed["id"] == task["id"] and claimed["workerId"] == "worker-dev"
    body = {"status": "COMPLETED", "result": {"ok": True}}
    async with http.post(f"{base}/tasks/{task['id']}/result", json=body, headers=auth) as r:
        assert r.status == 200, await r.text()
    async with http.get(f"{base}/admin/queues/A", headers=auth) as r:
        assert r.status == 200, await r.text()
    warnings = child.events("config warning")
    assert len(warnings) == 1 and "'worker-dev'" in warnings[0]["detail"], warnings
    assert "dev-token" not in child.log_text()
