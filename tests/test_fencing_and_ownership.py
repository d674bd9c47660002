"""Who may act on a task: fenced lease tokens, owner-only operations, tenancy,
scopes and eventTypes, authentication, and the shape of every error."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import Api, wait_for

from codeq.store import keys

TASKS = "/v1/codeq/tasks"
WORKER_ACTIONS = ["heartbeat", "nack", "abandon", "result"]
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def action_body(action: str) -> dict[str, Any]:
    """A valid body for a worker action on a task."""
    return {"status": "COMPLETED", "result": {"ok": True}} if action == "result" else {}


async def act(
    api: Api,
    task_id: str,
    action: str,
    who: str = "worker",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[int, Any]:
    """POSTs a worker action (heartbeat, nack, abandon, result) on a task."""
    body = {**action_body(action), **extra}
    status, data, _ = await api.call("POST", f"{TASKS}/{task_id}/{action}", who, body, headers)
    return status, data


async def claim_one(api: Api, who: str = "worker", **fields: Any) -> Any:
    task = await api.claim(who, commands=["A"], **fields)
    assert task is not None, "no task was ready"
    return task


def unknown_id(tenant: str = "acme") -> str:
    """A well-formed task ID of the tenant that names no task."""
    return keys.new_task_id(keys.tenant_tag(tenant))


def assert_error(status: int, body: Any, expected: int, *words: str) -> None:
    """An error answer: the expected status and an {"error": message} naming the problem."""
    assert status == expected, body
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    for word in words:
        assert word.lower() in body["error"].lower(), body


@pytest.fixture
async def fast_api(start_daemon: Any, http: Any) -> Api:
    """A daemon whose reaped tasks are ready again at once (zero backoff)."""
    running = await start_daemon(backoff_base_seconds=0)
    return Api(http, running.url)


async def reclaimed_by_worker2(api: Api) -> tuple[Any, Any]:
    """Worker A claims with a 1 s lease that expires; worker B then claims the task.
    Returns (A's claim, B's claim)."""
    await api.create("A")
    first = await claim_one(api, leaseSeconds=1)
    second = await wait_for(
        lambda: api.claim("worker2", commands=["A"]),
        timeout=5,
        message="the expired lease to be reaped and reclaimed",
    )
    assert second["id"] == first["id"]
    assert second["workerId"] == "worker-2"
    assert second["leaseToken"] != first["leaseToken"]
    return first, second


# ------------------------------------------------------------ fencing


def lease_token_in(where: str, token: str) -> dict[str, Any]:
    """The act() keyword arguments that present a lease token in a header or the body."""
    if where == "header":
        return {"headers": {"X-Lease-Token": token}}
    return {"leaseToken": token}


@pytest.mark.parametrize("where", ["header", "body"])
async def test_zombie_result_with_stale_token_is_refused(fast_api: Api, where: str) -> None:
    """A late result with the old lease token (header or body) gets 409; the new owner's
    result wins."""
    first, second = await reclaimed_by_worker2(fast_api)
    status, body = await act(
        fast_api,
        first["id"],
        "result",
        result={"by": "A"},
        **lease_token_in(where, first["leaseToken"]),
    )
    assert_error(status, body, 409, "stale")
    status, body = await act(
        fast_api,
        first["id"],
        "result",
        "worker2",
        result={"by": "B"},
        **lease_token_in(where, second["leaseToken"]),
    )
    assert status == 200, body
    status, both, _ = await fast_api.call("GET", f"{TASKS}/{first['id']}/result", "producer")
    assert both["result"]["result"] == {"by": "B"}
    assert both["task"]["status"] == "COMPLETED"


async def test_zombie_result_without_token_is_not_the_owner(fast_api: Api) -> None:
    """A late result without a token, after another worker claimed the task, gets 403."""
    first, _ = await reclaimed_by_worker2(fast_api)
    status, body = await act(fast_api, first["id"], "result", result={"by": "A"})
    assert_error(status, body, 403)
    status, stored = await fast_api.get(first["id"])
    assert stored["status"] == "IN_PROGRESS"
    assert stored["workerId"] == "worker-2"


@pytest.mark.parametrize("action", WORKER_ACTIONS)
async def test_stale_token_is_refused_and_changes_nothing(api: Api, action: str) -> None:
    """An action carrying the token of an earlier claim gets 409 and leaves the task as is."""
    created = await api.create("A")
    old = await claim_one(api)
    assert (await act(api, created["id"], "abandon"))[0] == 200
    current = await claim_one(api)
    assert current["leaseToken"] != old["leaseToken"]
    _, before = await api.get(created["id"])

    status, body = await act(
        api, created["id"], action, headers={"X-Lease-Token": old["leaseToken"]}
    )
    assert_error(status, body, 409, "stale")
    _, after = await api.get(created["id"])
    assert after == before
    status, body = await act(
        api, created["id"], "heartbeat", headers={"X-Lease-Token": current["leaseToken"]}
    )
    assert status == 200, body


@pytest.mark.parametrize("action", WORKER_ACTIONS)
async def test_current_token_is_accepted(api: Api, action: str) -> None:
    """An action carrying the lease token of the current claim succeeds."""
    created = await api.create("A")
    task = await claim_one(api)
    status, body = await act(api, created["id"], action, leaseToken=task["leaseToken"])
    assert status == 200, body


@pytest.mark.parametrize("action", WORKER_ACTIONS)
async def test_another_workers_valid_token_is_not_enough(api: Api, action: str) -> None:
    """A worker presenting the owner's current lease token is still not the owner: 403."""
    created = await api.create("A")
    task = await claim_one(api)
    status, body = await act(
        api, created["id"], action, "worker2", headers={"X-Lease-Token": task["leaseToken"]}
    )
    assert_error(status, body, 403)
    _, stored = await api.get(created["id"])
    assert stored["status"] == "IN_PROGRESS"
    assert stored["workerId"] == "worker-1"


async def test_lease_token_is_shown_only_to_the_claiming_worker(api: Api) -> None:
    """GET on a leased task does not disclose its lease token."""
    created = await api.create("A")
    await claim_one(api)
    for who in ("producer", "worker", "worker2"):
        status, stored = await api.get(created["id"], who)
        assert status == 200, stored
        assert stored["status"] == "IN_PROGRESS"
        assert "leaseToken" not in stored


# ------------------------------------------------------------ ownership


@pytest.mark.parametrize("action", WORKER_ACTIONS)
async def test_another_worker_is_forbidden(api: Api, action: str) -> None:
    """Without a token, only the owner may act: another worker gets 403 and nothing changes."""
    created = await api.create("A")
    await claim_one(api)
    _, before = await api.get(created["id"])
    status, body = await act(api, created["id"], action, "worker2")
    assert_error(status, body, 403, "another worker")
    _, after = await api.get(created["id"])
    assert after == before


async def test_second_result_conflicts_and_keeps_the_first(api: Api) -> None:
    """A second result gets 409 and the stored result stays the first one."""
    created = await api.create("A")
    await claim_one(api)
    status, _ = await api.result(created["id"], result={"n": 1})
    assert status == 200
    status, body = await api.result(created["id"], result={"n": 2})
    assert_error(status, body, 409, "COMPLETED")
    status, body = await api.result(created["id"], status="FAILED", result=None, error="late")
    assert_error(status, body, 409)
    _, both, _ = await api.call("GET", f"{TASKS}/{created['id']}/result", "producer")
    assert both["result"]["result"] == {"n": 1}
    assert both["task"]["status"] == "COMPLETED"


@pytest.mark.parametrize("action", WORKER_ACTIONS)
async def test_action_on_a_pending_task_conflicts(api: Api, action: str) -> None:
    """An action on a task that is not IN_PROGRESS gets 409."""
    created = await api.create("A")
    status, body = await act(api, created["id"], action)
    assert_error(status, body, 409, "PENDING")


# ------------------------------------------------------------ unknown and malformed ids


ID_ENDPOINTS = [
    ("GET", "", "producer"),
    ("GET", "/result", "producer"),
    ("GET", "/history", "producer"),
    ("POST", "/heartbeat", "worker"),
    ("POST", "/nack", "worker"),
    ("POST", "/abandon", "worker"),
    ("POST", "/result", "worker"),
]


@pytest.mark.parametrize(("method", "suffix", "who"), ID_ENDPOINTS)
async def test_unknown_task_is_404(api: Api, method: str, suffix: str, who: str) -> None:
    """A well-formed ID of the caller's tenant that names no task gets 404."""
    body = action_body(suffix.lstrip("/")) if method == "POST" else None
    status, data, _ = await api.call(method, f"{TASKS}/{unknown_id()}{suffix}", who, body)
    assert_error(status, data, 404, "not found")


@pytest.mark.parametrize("bad_id", ["x" * 65, "%20", "semi;colon"])
@pytest.mark.parametrize(("method", "suffix", "who"), ID_ENDPOINTS)
async def test_malformed_task_id_is_400(
    api: Api, method: str, suffix: str, who: str, bad_id: str
) -> None:
    """A task ID that can never be valid (over 64 characters, or not URL-safe) gets
    400 naming the id; one of the right shape codeq did not mint is a 404."""
    body = action_body(suffix.lstrip("/")) if method == "POST" else None
    status, data, _ = await api.call(method, f"{TASKS}/{bad_id}{suffix}", who, body)
    assert_error(status, data, 400, "id")


# ------------------------------------------------------------ tenancy


@pytest.mark.parametrize(
    ("method", "suffix", "who"),
    [
        ("GET", "", "producer_globex"),
        ("GET", "/result", "producer_globex"),
        ("GET", "/history", "producer_globex"),
        ("GET", "", "worker_globex"),
        ("POST", "/heartbeat", "worker_globex"),
        ("POST", "/result", "worker_globex"),
        ("POST", "/nack", "worker_globex"),
        ("POST", "/abandon", "worker_globex"),
    ],
)
async def test_another_tenants_task_is_404(api: Api, method: str, suffix: str, who: str) -> None:
    """Another tenant's task is not found (404, like an unknown one), never a leaking 403."""
    created = await api.create("A")
    await claim_one(api)
    body = action_body(suffix.lstrip("/")) if method == "POST" else None
    status, data, _ = await api.call(method, f"{TASKS}/{created['id']}{suffix}", who, body)
    assert_error(status, data, 404)
    _, unknown, _ = await api.call(method, f"{TASKS}/{unknown_id('globex')}{suffix}", who, body)
    assert data == unknown
    _, stored = await api.get(created["id"])
    assert stored["status"] == "IN_PROGRESS"
    assert stored["workerId"] == "worker-1"


async def test_another_tenants_worker_cannot_claim_the_task(api: Api) -> None:
    """A worker of another tenant never claims this tenant's tasks."""
    await api.create("A")
    assert await api.claim("worker_globex", commands=["A"]) is None
    assert await api.claim("worker_globex") is None
    assert await api.claim("worker", commands=["A"]) is not None


# ------------------------------------------------------------ scopes and eventTypes


@pytest.mark.parametrize("action", WORKER_ACTIONS)
async def test_missing_scope_is_403(api: Api, action: str) -> None:
    """A worker token without the action's scope gets 403 naming the scope."""
    created = await api.create("A")
    task = await claim_one(api, "worker_claim_only")
    status, body = await act(api, created["id"], action, "worker_claim_only")
    assert_error(status, body, 403, f"codeq:{action}")
    _, stored = await api.get(created["id"])
    assert stored["status"] == "IN_PROGRESS"
    assert stored["leaseUntil"] == task["leaseUntil"]


async def test_claim_outside_event_types_is_403(api: Api) -> None:
    """Claiming a command outside the token's eventTypes gets 403 naming the command."""
    await api.create("B")
    status, body, _ = await api.call("POST", f"{TASKS}/claim", "worker_a_only", {"commands": ["B"]})
    assert_error(status, body, 403, "'B'", "eventTypes")
    _, stored, _ = await api.call("POST", f"{TASKS}/claim", "worker", {"commands": ["B"]})
    assert stored["attempts"] == 1


async def test_claim_without_commands_covers_only_the_event_types(api: Api) -> None:
    """A claim naming no commands takes only commands the token's eventTypes allow."""
    await api.create("B", priority=9)
    a_task = await api.create("A")
    task = await api.claim("worker_a_only")
    assert task is not None and task["id"] == a_task["id"]
    assert await api.claim("worker_a_only") is None


# ------------------------------------------------------------ authentication


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/claim"),
        ("POST", "/{id}/heartbeat"),
        ("POST", "/{id}/nack"),
        ("POST", "/{id}/abandon"),
        ("POST", "/{id}/result"),
    ],
)
async def test_producer_token_on_worker_endpoint_is_401(api: Api, method: str, path: str) -> None:
    """A producer token is not a worker token: worker endpoints answer 401."""
    created = await api.create("A")
    suffix = path.format(id=created["id"])
    body = action_body(suffix.rsplit("/", 1)[-1])
    status, data, _ = await api.call(method, TASKS + suffix, "producer", body)
    assert_error(status, data, 401, "worker")
    _, stored = await api.get(created["id"])
    assert stored["status"] == "PENDING"


@pytest.mark.parametrize(
    ("headers", "word"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer not-a-real-token-at-all"}, "invalid"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing"),
        ({"Authorization": "Bearer "}, "missing"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("POST", ""), ("POST", "/claim"), ("GET", "/{id}")])
async def test_missing_or_invalid_token_is_401(
    api: Api, redis: Any, headers: dict[str, str], word: str, method: str, path: str
) -> None:
    """No bearer token or an unknown one gets 401 and creates nothing."""
    created = await api.create("A")
    body = {"command": "A", "payload": {}} if method == "POST" else None
    status, data, _ = await api.call(
        method, TASKS + path.format(id=created["id"]), None, body, headers
    )
    assert_error(status, data, 401, word)
    tag = keys.tenant_tag("acme")
    assert await redis.llen(keys.ready(tag, "A", 0)) == 1


# ------------------------------------------------------------ error shape and request ids


async def error_cases(api: Api) -> list[tuple[int, str, str, str | None, Any]]:
    """One request per error status: (expected status, method, path, who, body)."""
    created = await api.create("A")
    return [
        (400, "POST", TASKS, "producer", {"command": "has space", "payload": {}}),
        (401, "POST", TASKS, None, {"command": "A", "payload": {}}),
        (403, "POST", f"{TASKS}/claim", "worker_a_only", {"commands": ["B"]}),
        (404, "GET", f"{TASKS}/{unknown_id()}", "producer", None),
        (409, "POST", f"{TASKS}/{created['id']}/heartbeat", "worker", {}),
    ]


async def test_every_error_is_json_with_a_request_id(api: Api) -> None:
    """Each error status answers {"error": message} as JSON and carries a generated X-Request-Id."""
    seen = set()
    for expected, method, path, who, body in await error_cases(api):
        status, data, headers = await api.call(method, path, who, body)
        assert_error(status, data, expected)
        assert data["error"].strip(), data
        assert headers["Content-Type"].startswith("application/json")
        assert REQUEST_ID_RE.match(headers["X-Request-Id"]), headers
        seen.add(headers["X-Request-Id"])
    assert len(seen) == 5, "request ids must differ per request"


async def test_request_id_is_echoed(api: Api) -> None:
    """A client's X-Request-Id comes back unchanged, on success and on error."""
    sent = {"X-Request-Id": "client-chosen-id-123"}
    status, _, headers = await api.call(
        "POST", TASKS, "producer", {"command": "A", "payload": {}}, sent
    )
    assert status == 202
    assert headers["X-Request-Id"] == "client-chosen-id-123"
    status, _, headers = await api.call("GET", f"{TASKS}/{unknown_id()}", "producer", headers=sent)
    assert status == 404
    assert headers["X-Request-Id"] == "client-chosen-id-123"
