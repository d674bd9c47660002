"""Bad input of every kind gets a clear 4xx naming the problem and changes nothing in
the store; unknown fields are accepted but named in X-CodeQ-Warning."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import TOKENS, Api
from redis.asyncio import Redis

TASKS = "/v1/codeq/tasks"


async def snapshot(redis: Redis) -> dict[str, Any]:
    """Every key of the store with its type and content (SCAN, not KEYS)."""
    state: dict[str, Any] = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        else:
            value = kind
        state[key] = (kind, value)
    return state


@pytest.fixture
async def seeded(api: Api, redis: Redis) -> dict[str, Any]:
    """A store holding one ready task of tenant acme, so a change would show."""
    task = await api.create("A", payload={"seed": True})
    assert len(await snapshot(redis)) > 0
    return task


async def rejected(
    api: Api,
    redis: Redis,
    method: str,
    path: str,
    who: str,
    body: Any,
    expected: int = 400,
    **kwargs: Any,
) -> dict[str, Any]:
    """Sends a bad request; checks the status, the {"error"} body and that the store
    is unchanged. Returns the error body. `body` bytes/str are sent raw."""
    before = await snapshot(redis)
    headers = {"Authorization": f"Bearer {TOKENS[who][0]}", "Content-Type": "application/json"}
    if isinstance(body, bytes | str):
        request = api.http.request(method, api.base + path, data=body, headers=headers)
    else:
        request = api.http.request(method, api.base + path, json=body, headers=headers)
    async with request as resp:
        data = await resp.json(content_type=None)
        assert resp.status == expected, data
        assert resp.headers["Content-Type"].startswith("application/json")
    assert isinstance(data, dict) and isinstance(data.get("error"), str) and data["error"], data
    assert await snapshot(redis) == before, "a rejected request changed the store"
    return data


# ------------------------------------------------------------ body shape


@pytest.mark.parametrize(
    ("raw", "word"),
    [
        (b"{not json", "malformed JSON"),
        (b'{"command": "A",}', "malformed JSON"),
        (b"[1, 2, 3]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b"42", "JSON object"),
        (b"null", "JSON object"),
        (b"\xff\xfe", "malformed JSON"),
    ],
)
async def test_create_body_that_is_not_a_json_object(
    api: Api, redis: Redis, seeded: Any, raw: bytes, word: str
) -> None:
    """Create with malformed JSON or a non-object body gets 400 and creates nothing."""
    data = await rejected(api, redis, "POST", TASKS, "producer", raw)
    assert word.lower() in data["error"].lower(), data


@pytest.mark.parametrize("path", ["/claim", "/{id}/heartbeat", "/{id}/nack", "/{id}/result"])
async def test_worker_body_that_is_not_a_json_object(
    api: Api, redis: Redis, seeded: Any, path: str
) -> None:
    """Worker endpoints reject a malformed JSON body with 400 and change nothing."""
    await api.claim(commands=["A"])
    data = await rejected(
        api, redis, "POST", TASKS + path.format(id=seeded["id"]), "worker", b'{"status": '
    )
    assert "malformed json" in data["error"].lower(), data


# ------------------------------------------------------------ create fields


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {}}, "command"),
        ({"command": ""}, "command"),
        ({"command": "has space"}, "command"),
        ({"command": "{A}"}, "command"),
        ({"command": "x" * 129}, "command"),
        ({"command": 42}, "command"),
        ({"command": "A", "payload": {}, "priority": "high"}, "priority"),
        ({"command": "A", "payload": {}, "priority": 1.5}, "priority"),
        ({"command": "A", "payload": {}, "maxAttempts": True}, "maxAttempts"),
        ({"command": "A", "payload": {}, "maxAttempts": 0}, "maxAttempts"),
        ({"command": "A"}, "payload"),
        ({"command": "A", "payload": None}, "payload"),
        ({"command": "A", "payload": {}, "delaySeconds": -5}, "delaySeconds"),
        ({"command": "A", "payload": {}, "delaySeconds": "soon"}, "delaySeconds"),
        ({"command": "A", "payload": {}, "runAt": "tomorrow"}, "runAt"),
        ({"command": "A", "payload": {}, "runAt": "2030-01-01T10:00:00"}, "runAt"),
        ({"command": "A", "payload": {}, "runAt": 1700000000}, "runAt"),
        ({"command": "A", "payload": {}, "webhook": "ftp://x"}, "webhook"),
        ({"command": "A", "payload": {}, "webhook": "not a url"}, "webhook"),
        ({"command": "A", "payload": {}, "idempotencyKey": 7}, "idempotencyKey"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_create_with_a_bad_field(
    api: Api, redis: Redis, seeded: Any, body: dict[str, Any], field: str
) -> None:
    """Create with a missing, mistyped or out-of-range field gets 400 naming the field."""
    data = await rejected(api, redis, "POST", TASKS, "producer", body)
    assert field in data["error"], data


# ------------------------------------------------------------ claim fields


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"commands": "A"}, "commands"),
        ({"commands": [1]}, "commands"),
        ({"commands": ["has space"]}, "commands"),
        ({"leaseSeconds": -1}, "leaseSeconds"),
        ({"leaseSeconds": 0}, "leaseSeconds"),
        ({"leaseSeconds": "60"}, "leaseSeconds"),
        ({"waitSeconds": True}, "waitSeconds"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_claim_with_a_bad_field(
    api: Api, redis: Redis, seeded: Any, body: dict[str, Any], field: str
) -> None:
    """Claim with a mistyped or out-of-range field gets 400 naming the field and leases nothing."""
    data = await rejected(api, redis, "POST", f"{TASKS}/claim", "worker", body)
    assert field in data["error"], data


# ------------------------------------------------------------ worker reports


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "DONE", "result": {}}, "status"),
        ({}, "status"),
        ({"status": "COMPLETED"}, "result"),
        ({"status": "COMPLETED", "result": "yes"}, "result"),
        ({"status": "FAILED"}, "error"),
        ({"status": "FAILED", "error": 500}, "error"),
        ({"status": "COMPLETED", "result": {}, "artifacts": "x"}, "artifacts"),
        ({"status": "COMPLETED", "result": {}, "artifacts": [{"name": "a"}]}, "url"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_result_with_a_bad_field(
    api: Api, redis: Redis, seeded: Any, body: dict[str, Any], field: str
) -> None:
    """A result with a bad status, or without the result/error its status needs, gets 400."""
    assert await api.claim(commands=["A"]) is not None
    data = await rejected(api, redis, "POST", f"{TASKS}/{seeded['id']}/result", "worker", body)
    assert field in data["error"], data


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("nack", {"delaySeconds": -1}, "delaySeconds"),
        ("nack", {"delaySeconds": "later"}, "delaySeconds"),
        ("nack", {"reason": 5}, "reason"),
        ("heartbeat", {"extendSeconds": 0}, "extendSeconds"),
        ("heartbeat", {"extendSeconds": "1m"}, "extendSeconds"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_nack_and_heartbeat_with_a_bad_field(
    api: Api, redis: Redis, seeded: Any, action: str, body: dict[str, Any], field: str
) -> None:
    """A nack or heartbeat with a bad field gets 400 naming it and leaves the lease as is."""
    assert await api.claim(commands=["A"]) is not None
    data = await rejected(api, redis, "POST", f"{TASKS}/{seeded['id']}/{action}", "worker", body)
    assert field in data["error"], data


# ------------------------------------------------------------ size limit


async def test_body_over_the_limit_is_413(start_daemon: Any, http: Any, redis: Redis) -> None:
    """A body larger than max_body_bytes gets 413 with a JSON error and creates nothing."""
    running = await start_daemon(max_body_bytes=2048)
    api = Api(http, running.url)
    await api.create("A")
    body = {"command": "A", "payload": {"blob": "x" * 10_000}}
    data = await rejected(api, redis, "POST", TASKS, "producer", body, expected=413)
    assert "2048" in data["error"], data


async def test_body_under_the_limit_is_accepted(start_daemon: Any, http: Any) -> None:
    """A body just under max_body_bytes is accepted."""
    running = await start_daemon(max_body_bytes=2048)
    api = Api(http, running.url)
    task = await api.create("A", payload={"blob": "x" * 1500})
    assert len(task["payload"]) > 1500


# ------------------------------------------------------------ unknown fields


async def test_unknown_create_field_is_named_in_a_warning(api: Api) -> None:
    """An unknown create field is ignored (202) but named in X-CodeQ-Warning."""
    status, task, headers = await api.call(
        "POST", TASKS, "producer", {"command": "A", "payload": {}, "delay_seconds": 60}
    )
    assert status == 202, task
    assert "delay_seconds" in headers["X-CodeQ-Warning"]
    assert "runAt" not in task
    claimed = await api.claim(commands=["A"])
    assert claimed is not None and claimed["id"] == task["id"]


async def test_unknown_claim_field_is_named_in_a_warning(api: Api) -> None:
    """An unknown claim field is named in X-CodeQ-Warning, on a 204 as on a 200."""
    status, _, headers = await api.call(
        "POST", f"{TASKS}/claim", "worker", {"commands": ["A"], "lease_seconds": 5}
    )
    assert status == 204
    assert "lease_seconds" in headers["X-CodeQ-Warning"]


async def test_known_fields_carry_no_warning(api: Api) -> None:
    """A create with only known fields has no X-CodeQ-Warning header."""
    status, _, headers = await api.call(
        "POST", TASKS, "producer", {"command": "A", "payload": {}, "priority": 3, "delaySeconds": 0}
    )
    assert status == 202
    assert "X-CodeQ-Warning" not in headers
