"""codeQ's clients and deployments, unchanged (issue 12): codeQ's static provider
configs from the environment, and the wire as codeQ's SDKs read it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
from conftest import Api, ServeProcess
from redis.asyncio import Redis

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


# ------------------------------------------------------------ the wire, as codeQ's SDKs read it

V1 = "/v1/codeq"


async def test_unknown_task_id_of_any_shape_is_404(api: Api) -> None:
    """An id codeq did not mint (a UUID, any URL-safe string up to 64 characters) is
    404 like codeQ; only an id that can never be valid is a 400."""
    for task_id in ("3f2b8c1e-9d4a-4c6b-8f0e-2a7d5e1c9b3a", "abc", "a.b~c_d-e", "x" * 64):
        for method, path, who in (
            ("GET", f"{V1}/tasks/{task_id}", "producer"),
            ("GET", f"{V1}/tasks/{task_id}/result", "producer"),
            ("POST", f"{V1}/tasks/{task_id}/heartbeat", "worker"),
        ):
            status, body, _ = await api.call(method, path, who, {} if method == "POST" else None)
            assert status == 404, (task_id, path, body)
    for task_id in ("x" * 65, "bad%20id", "semi;colon"):
        status, body, _ = await api.call("GET", f"{V1}/tasks/{task_id}", "producer")
        assert status == 400 and body["field"] == "id", (task_id, body)


async def test_result_of_a_task_not_ended_is_404_result_not_found(api: Api) -> None:
    """GET /tasks/{id}/result before the end: 404 {"error":"result not found"} (the
    task rides along for codeq's own clients); with waitSeconds, 404 at the deadline;
    after the end, 200."""
    task = await api.create("R")
    status, body, _ = await api.call("GET", f"{V1}/tasks/{task['id']}/result", "producer")
    assert (status, body["error"]) == (404, "result not found"), body
    assert body["task"]["status"] == "PENDING"
    loop = asyncio.get_running_loop()
    started = loop.time()
    path = f"{V1}/tasks/{task['id']}/result?waitSeconds=1"
    status, body, _ = await api.call("GET", path, "producer")
    assert (status, body["error"]) == (404, "result not found")
    assert loop.time() - started >= 0.9
    claimed = await api.claim(commands=["R"])
    assert (await api.result(claimed["id"]))[0] == 200
    status, body, _ = await api.call("GET", f"{V1}/tasks/{task['id']}/result", "producer")
    assert status == 200 and body["result"]["status"] == "COMPLETED", body


async def test_result_wait_is_clamped_like_codeq(api: Api) -> None:
    """waitSeconds above 60 is capped to 60, a bad or negative one means no wait; each
    named in X-CodeQ-Warning, never a 400."""
    task = await api.create("RW")
    claimed = await api.claim(commands=["RW"])
    assert (await api.result(claimed["id"]))[0] == 200
    base = f"{V1}/tasks/{task['id']}/result"
    status, _, headers = await api.call("GET", f"{base}?waitSeconds=600", "producer")
    assert status == 200 and "clamped to 60" in headers["X-CodeQ-Warning"]
    pending = await api.create("RW2")
    for raw in ("abc", "-5"):
        path = f"{V1}/tasks/{pending['id']}/result?waitSeconds={raw}"
        status, body, headers = await api.call("GET", path, "producer")
        assert status == 404 and "waitSeconds" in headers["X-CodeQ-Warning"], (raw, body)


async def test_claim_wait_seconds_outside_0_30_is_clamped(api: Api) -> None:
    """A claim's waitSeconds < 0 means no wait and > 30 means 30, as codeQ; the clamp
    is named in X-CodeQ-Warning instead of a 400."""
    status, _, headers = await api.call(
        "POST", f"{V1}/tasks/claim", "worker", {"commands": ["CW"], "waitSeconds": -3}
    )
    assert status == 204 and "clamped to 0" in headers["X-CodeQ-Warning"]
    await api.create("CW")
    status, body, headers = await api.call(
        "POST", f"{V1}/tasks/claim", "worker", {"commands": ["CW"], "waitSeconds": 90}
    )
    assert status == 200 and "clamped to 30" in headers["X-CodeQ-Warning"], body
    status, body, _ = await api.call(
        "POST", f"{V1}/tasks/claim", "worker", {"commands": ["CW"], "waitSeconds": "5"}
    )
    assert status == 400 and body["field"] == "waitSeconds"


async def test_nack_that_dead_letters_answers_like_codeq(api: Api) -> None:
    """The last attempt's nack answers {"status":"dlq","delaySeconds":0}, the fields
    codeQ's Python SDK reads."""
    task = await api.create("DL", maxAttempts=1)
    assert (await api.claim(commands=["DL"]))["id"] == task["id"]
    status, body, _ = await api.call("POST", f"{V1}/tasks/{task['id']}/nack", "worker", {})
    assert status == 200
    assert (body["status"], body["delaySeconds"]) == ("dlq", 0), body


async def test_create_needs_a_payload_of_any_json_value(api: Api, redis: Redis) -> None:
    """No payload (or null) is a 400 naming it, as codeQ binds it required; any other
    JSON value is kept and comes back as its JSON text."""
    before = {key async for key in redis.scan_iter(count=1000)}
    for body in ({"command": "P"}, {"command": "P", "payload": None}):
        status, answer, _ = await api.call("POST", f"{V1}/tasks", "producer", body)
        assert status == 400 and answer["field"] == "payload", answer
    assert {key async for key in redis.scan_iter(count=1000)} == before
    for payload in ([1, 2], "text", 7, True, {"k": "v"}):
        task = await api.create("P", payload=payload)
        assert json.loads(task["payload"]) == payload


async def test_a_codeq_sdk_lifecycle(api: Api) -> None:
    """The lifecycle as codeQ's SDKs drive it: create with codeQ's fields, poll the
    result on 404, claim, heartbeat, complete, and read the result's fields."""
    status, task, _ = await api.call(
        "POST", f"{V1}/tasks", "producer",
        {"command": "GENERATE_MASTER", "payload": {"jobId": "j-1"}, "priority": 3},
    )  # fmt: skip
    assert status == 202
    assert {"id", "command", "payload", "priority", "status", "attempts", "maxAttempts",
            "tenantId", "createdAt", "updatedAt"} <= set(task)  # fmt: skip
    result_path = f"{V1}/tasks/{task['id']}/result"
    assert (await api.call("GET", result_path, "producer"))[0] == 404  # waitForResult polls

    status, claimed, _ = await api.call(
        "POST", f"{V1}/tasks/claim", "worker",
        {"commands": ["GENERATE_MASTER"], "leaseSeconds": 60, "waitSeconds": 5},
    )  # fmt: skip
    assert status == 200 and claimed["id"] == task["id"]
    assert claimed["status"] == "IN_PROGRESS" and claimed["workerId"] == "worker-1"
    status, beat, _ = await api.call(
        "POST", f"{V1}/tasks/{task['id']}/heartbeat", "worker", {"extendSeconds": 60}
    )
    assert status == 200 and beat["ok"] is True
    status, done, _ = await api.call(
        "POST", f"{V1}/tasks/{task['id']}/result", "worker",
        {"status": "COMPLETED", "result": {"url": "https://cdn.example/j-1.mp4"}},
    )  # fmt: skip
    assert status == 200 and done["status"] == "COMPLETED"
    status, answer, _ = await api.call("GET", result_path, "producer")
    assert status == 200
    assert answer["task"]["status"] == "COMPLETED"
    assert answer["result"]["result"] == {"url": "https://cdn.example/j-1.mp4"}
    assert {"taskId", "status", "completedAt"} <= set(answer["result"])
