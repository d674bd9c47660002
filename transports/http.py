"""The HTTP transport (aiohttp): codeQ's v1 API. It parses, authenticates, calls the
service and encodes; no business rule and no store call lives here."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
import structlog
from aiohttp import web
from codeq_transports.connections import LINGER_SECONDS, ConnectionGuard, GuardedRunner

from codeq import metrics, openapi, wire
from codeq.domain import (
    TERMINAL,
    CodeqError,
    Invalid,
    LeaseProof,
    NewTask,
    NotFound,
    Principal,
    Task,
    TooManyRequests,
    replay_differences,
    rfc3339,
    trace_parent_problem,
    trace_state_problem,
)
from codeq.ratelimit import Scope
from codeq.transport import TransportContext
from codeq.unix_socket import UnixListener, listen_unix

log = structlog.get_logger("codeq.http")

PREFIX = "/v1/codeq"
CTX = web.AppKey("codeq.context", TransportContext)
GUARD = web.AppKey("codeq.connections", ConnectionGuard)
# The X-CodeQ-Warning text of a request. aiohttp >= 3.14 warns on plain string keys
# in request storage and offers web.RequestKey; older releases lack it.
WARNING: Any = (
    web.RequestKey("codeq.warning", str) if hasattr(web, "RequestKey") else "codeq.warning"
)

_STATUS = wire.ERROR_STATUS

# The per-token rate limit (SPEC §6) of each route, by method and route path: a
# route is limited by adding its line here.
RATE_LIMITED: dict[tuple[str, str], Scope] = {
    ("POST", f"{PREFIX}/tasks"): Scope.CREATE,
    ("POST", f"{PREFIX}/tasks/claim"): Scope.CLAIM,
    ("POST", f"{PREFIX}/tasks/claim/batch"): Scope.CLAIM,
    ("POST", f"{PREFIX}/admin/tasks/cleanup"): Scope.ADMIN_CLEANUP,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


# What a request's log lines carry besides the request id, as far as it is known.
_LOG_CONTEXT = ("request_id", "tenant", "subject", "command", "task_id")
# Probes and scrapes log at debug: one access line per request, without the noise.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def errors_and_request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Echoes or generates X-Request-Id, maps domain errors to codeQ's status codes
    with an {"error": ...} body (unexpected errors are logged and answered as 500
    without a traceback), and writes one access-log line per request, with the
    tenant, command and task id where known, and the request metrics."""
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-Id") or ""
    if not REQUEST_ID_RE.fullmatch(request_id):
        request_id = secrets.token_hex(16)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    if "id" in request.match_info:
        structlog.contextvars.bind_contextvars(task_id=request.match_info["id"])
    try:
        if (guard := request.app.get(GUARD)) is not None:
            guard.request_started(request.transport)
        _check_headers(request)
        response = await handler(request)
    except CodeqError as exc:
        response = json_response({"error": exc.message, **exc.extra}, _STATUS[type(exc)])
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[CTX].config.max_body_bytes
        response = json_response({"error": f"request body exceeds {limit} bytes"}, 413)
    except web.HTTPException as exc:
        if exc.status >= 400:
            allow = exc.headers.get("Allow")  # a 405 names the methods the path has
            response = json_response(
                {"error": exc.reason}, exc.status, {"Allow": allow} if allow else None
            )
        else:
            raise
    except Exception:
        log.exception("unhandled error", path=request.path)
        response = json_response({"error": "internal error"}, 500)
    try:
        response.headers["X-Request-Id"] = request_id
        _access(request, response.status, time.perf_counter() - started)
    finally:
        structlog.contextvars.unbind_contextvars(*_LOG_CONTEXT)
    return response


# An X-Request-Id is echoed only when it is a plain token; any other is replaced by
# a generated one, so a response header never carries raw client bytes.
REQUEST_ID_RE = re.compile(r"[\x21-\x7e]{1,128}")


def _check_headers(request: web.Request) -> None:
    """Raises Invalid (400) for a request header whose bytes are not UTF-8, before
    anything is done: such a value cannot be stored, logged or compared safely.
    (aiohttp hands the undecodable bytes on as surrogate escapes.)"""
    for name, value in request.headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise Invalid(f"header {ascii(name)[1:-1]} is not valid UTF-8") from None


def _access(request: web.Request, status: int, seconds: float) -> None:
    """The access-log line and the request metrics. Routes are the resource patterns
    (/v1/codeq/tasks/{id}), so label values stay bounded."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    if request.app[CTX].metrics is not None:
        metrics.http_requests(request.method, route, status).inc()
        metrics.http_latency(request.method, route).observe(seconds)
    level = log.debug if route in _QUIET_ROUTES else log.info
    level(
        "request",
        method=request.method,
        route=route,
        status=status,
        duration_ms=round(seconds * 1000, 2),
        remote=request.remote,
    )


async def _caller(
    request: web.Request, authenticate: Callable[[str | None], Awaitable[Principal]]
) -> Principal:
    """Authenticates the bearer token, binds who is calling to the request's log
    context (the tenant and subject, never the token), and spends the token's rate
    limit of the route (RATE_LIMITED) -- after authentication, so a missing or
    invalid token is a 401 that spends nothing, and before the body is read, so a
    refused request does no work."""
    token = _bearer(request)
    who = await authenticate(token)
    structlog.contextvars.bind_contextvars(tenant=who.tenant, subject=who.subject)
    limiter = request.app[CTX].limiter
    if limiter is not None and token is not None:
        resource = request.match_info.route.resource
        scope = RATE_LIMITED.get((request.method, resource.canonical)) if resource else None
        if scope is not None and limiter.applies(scope):
            await limiter.enforce(token, scope)
    return who


def _bind_task(task: Task) -> None:
    structlog.contextvars.bind_contextvars(command=task.command, task_id=task.id)


async def _body(
    request: web.Request, known: frozenset[str], who: Principal | None = None
) -> dict[str, Any]:
    """The JSON body; unknown fields are ignored, as codeQ does, but named back in
    an X-CodeQ-Warning header so a typo does not pass unnoticed -- and, given `who`
    (claims, where a typo like `command` claims every command), logged once per
    caller and field set."""
    try:
        async with asyncio.timeout(request.app[CTX].config.http_body_timeout_seconds):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(reason="request body did not arrive in time") from None
    body = wire.parse_json_object(raw)
    unknown = wire.unknown_fields(body, known)
    if unknown:
        _warn(request, "unknown fields ignored: " + ", ".join(unknown))
        if who is not None:
            _log_once_per_caller(request, who, unknown)
    return body


_LOGGED_CALLERS: set[tuple[str, str, str, tuple[str, ...]]] = set()
_MAX_LOGGED_CALLERS = 10_000  # then the set starts over: bounded memory, rare repeats


def _log_once_per_caller(request: web.Request, who: Principal, unknown: list[str]) -> None:
    resource = request.match_info.route.resource
    key = (who.tenant, who.subject, resource.canonical if resource else "", tuple(unknown))
    if key in _LOGGED_CALLERS:
        return
    if len(_LOGGED_CALLERS) >= _MAX_LOGGED_CALLERS:
        _LOGGED_CALLERS.clear()
    _LOGGED_CALLERS.add(key)
    log.warning(
        "unknown fields ignored",
        fields=[ascii(name)[1:-1] for name in unknown],
        route=key[2],
    )


def _respond(request: web.Request, body: Any, status: int = 200) -> web.Response:
    warning = request.get(WARNING)
    return json_response(body, status, {"X-CodeQ-Warning": warning} if warning else None)


def _gone(request: web.Request) -> Callable[[], bool]:
    """Whether the client of a long-poll has closed its connection."""

    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    return gone


def _proof(request: web.Request, who: Principal, body: dict[str, Any]) -> LeaseProof:
    token = wire.parse_lease_token(body, request.headers.get("X-Lease-Token"))
    return LeaseProof(worker_id=who.subject, lease_token=token)


# ------------------------------------------------------------ handlers


async def create_task(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.producer)
    body = await _body(request, wire.CREATE_FIELDS)
    new = wire.parse_create(body)
    if new.trace_parent is None and "traceparent" in request.headers:
        new = _with_trace(new, request)
    task, created = await ctx.service.create(who, new)
    _bind_task(task)
    if created:
        return _respond(request, wire.task_to_wire(task), 202)
    if differ := replay_differences(new, task):
        _warn(request, wire.replay_warning(differ))
    response = _respond(request, wire.task_to_wire(task), 202)
    response.headers["X-CodeQ-Idempotent-Replay"] = "true"
    return response


def _with_trace(new: NewTask, request: web.Request) -> NewTask:
    """The W3C trace context of the request, when the body carries none. Headers
    that are not W3C Trace Context are ignored, as the spec tells a receiver to
    (a tracestate goes only with a valid traceparent)."""
    parent = request.headers.get("traceparent", "")
    if trace_parent_problem(parent):
        return new
    state = request.headers.get("tracestate")
    if state is not None and trace_state_problem(state):
        state = None
    return replace(new, trace_parent=parent, trace_state=state)


async def claim_task(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    warnings: list[str] = []
    req = wire.parse_claim(await _body(request, wire.CLAIM_FIELDS, who), warnings)
    _add_warnings(request, warnings)
    task = await ctx.service.claim(who, req, gone=_gone(request))
    if task is not None:
        _bind_task(task)
    if task is None:
        response = web.Response(status=204)
        if request.get(WARNING):
            response.headers["X-CodeQ-Warning"] = request[WARNING]
        return response
    return _respond(request, wire.task_to_wire(task, with_lease_token=True))


async def heartbeat(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    body = await _body(request, wire.HEARTBEAT_FIELDS)
    until = await ctx.service.heartbeat(
        who, request.match_info["id"], _proof(request, who, body), wire.parse_extend_seconds(body)
    )
    return _respond(request, {"ok": True, "leaseUntil": rfc3339(until)})


async def abandon(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    body = await _body(request, wire.ABANDON_FIELDS)
    status = await ctx.service.abandon(who, request.match_info["id"], _proof(request, who, body))
    return _respond(request, {"status": status})


async def nack(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    body = await _body(request, wire.NACK_FIELDS)
    delay, reason = wire.parse_nack(body)
    outcome = await ctx.service.nack(
        who, request.match_info["id"], _proof(request, who, body), delay, reason
    )
    return _respond(request, wire.nack_to_wire(outcome))


async def submit_result(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    body = await _body(request, wire.RESULT_FIELDS)
    submission = wire.parse_result(body)
    result = await ctx.service.submit_result(
        who, request.match_info["id"], _proof(request, who, body), submission
    )
    return _respond(request, wire.result_to_wire(result))


async def get_task(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    task = await ctx.service.get_task(who, request.match_info["id"])
    return json_response(wire.task_to_wire(task))


async def get_artifact(request: web.Request) -> web.Response:
    """An inline artifact, as stored: never rendered by a browser (attachment,
    nosniff), private to the tenant."""
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    name = request.match_info["name"]
    content, content_type = await ctx.service.artifact(who, request.match_info["id"], name)
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, no-store",
    }
    return web.Response(body=content, content_type=_media_type(content_type), headers=headers)


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip() or "application/octet-stream"


async def get_result(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    warnings: list[str] = []
    wait = wire.parse_result_wait(request.query, warnings)
    _add_warnings(request, warnings)
    task, result = await ctx.service.get_result(who, request.match_info["id"], wait)
    if result is None and task.status not in TERMINAL:
        # codeQ's answer, which its SDKs poll on; the task is an extra, for our clients
        body = {"error": "result not found", "task": wire.task_to_wire(task)}
        return _respond(request, body, 404)
    body = {
        "task": wire.task_to_wire(task),
        "result": wire.result_to_wire(result) if result else None,
    }
    return _respond(request, body)


async def get_history(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    entries = await ctx.service.history(who, request.match_info["id"])
    return json_response(
        {"taskId": request.match_info["id"], "history": wire.history_to_wire(entries)}
    )


async def cancel_task(request: web.Request) -> web.Response:
    """200 and the CANCELLED task, or 202 when the task is leased and its holder is
    asked to stop."""
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.producer)
    reason = wire.parse_cancel(await _body(request, wire.CANCEL_FIELDS))
    task, cancelled = await ctx.service.cancel(who, request.match_info["id"], reason)
    if cancelled:
        return _respond(request, wire.task_to_wire(task))
    return _respond(request, {"status": "cancel_requested", "task": wire.task_to_wire(task)}, 202)


# ------------------------------------------------------------ batches


async def create_batch(request: web.Request) -> web.Response:
    """POST /tasks/batch: up to 1000 creates in one store round trip; each item gets
    its task or its error, in order. Rate-limited as that many creates."""
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.producer)
    body = await _body(request, wire.BATCH_CREATE_FIELDS)
    _warn_items(request, body, "tasks", wire.CREATE_FIELDS)
    items = wire.parse_batch_create(body)
    token = _bearer(request)
    if ctx.limiter is not None and token is not None:
        await ctx.limiter.enforce(token, Scope.CREATE, cost=len(items))
    outcomes = await ctx.service.create_many(who, items)
    results = [
        _error_item(o) if isinstance(o, CodeqError) else wire.created_item(item, *o)  # type: ignore[arg-type]
        for item, o in zip(items, outcomes, strict=True)
    ]
    return _respond(request, {"results": results})


async def claim_batch(request: web.Request) -> web.StreamResponse:
    """POST /tasks/claim/batch: up to `count` tasks, long-polling like claim until at
    least one is ready; 204 when none came."""
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    req, count = wire.parse_batch_claim(await _body(request, wire.BATCH_CLAIM_FIELDS, who))
    tasks = await ctx.service.claim_many(who, req, count, gone=_gone(request))
    if not tasks:
        response = web.Response(status=204)
        if request.get(WARNING):
            response.headers["X-CodeQ-Warning"] = request[WARNING]
        return response
    return _respond(
        request, {"tasks": [wire.task_to_wire(t, with_lease_token=True) for t in tasks]}
    )


async def results_batch(request: web.Request) -> web.Response:
    """POST /tasks/batch/results: up to 1000 results in one store round trip; each
    item succeeds or fails on its own, in order."""
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    body = await _body(request, wire.BATCH_RESULTS_FIELDS)
    _warn_items(request, body, "results", wire.BATCH_RESULT_ITEM_FIELDS)
    items = wire.parse_batch_results(body)
    outcomes = await ctx.service.submit_results(who, items)
    answers = []
    for raw, outcome in zip(body["results"], outcomes, strict=True):
        if isinstance(outcome, CodeqError):
            task_id = raw.get("taskId") if isinstance(raw, dict) else None
            answers.append({"taskId": task_id, **_error_item(outcome)})
        else:
            answers.append({"taskId": outcome.task_id, "result": wire.result_to_wire(outcome)})
    return _respond(request, {"results": answers})


def _error_item(exc: CodeqError) -> dict[str, Any]:
    return wire.error_item(exc, _STATUS[type(exc)])


def _warn(request: web.Request, warning: str) -> None:
    """Adds a note to the request's X-CodeQ-Warning header. Notes name what the
    client sent (field names, …), so anything outside printable ASCII is escaped:
    a response header never carries raw client bytes."""
    if not (warning.isascii() and warning.isprintable()):
        warning = ascii(warning)[1:-1]
    request[WARNING] = f"{request[WARNING]}; {warning}" if request.get(WARNING) else warning


def _add_warnings(request: web.Request, warnings: list[str]) -> None:
    """Adds notes (a clamped value, …) to the request's X-CodeQ-Warning header."""
    for warning in warnings:
        _warn(request, warning)


def _warn_items(
    request: web.Request, body: dict[str, Any], name: str, known: frozenset[str]
) -> None:
    """Names unknown fields of batch items in the X-CodeQ-Warning header too."""
    unknown = wire.batch_unknown_fields(body, name, known)
    if unknown:
        _warn(request, "unknown fields ignored: " + ", ".join(unknown))


# ------------------------------------------------------------ subscriptions


async def create_subscription(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    new = wire.parse_subscribe(await _body(request, wire.SUBSCRIBE_FIELDS))
    subscription = await ctx.service.subscriptions.subscribe(who, new)
    return _respond(request, wire.subscription_to_wire(subscription))


async def subscription_heartbeat(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    ttl = wire.parse_subscription_ttl(await _body(request, wire.SUBSCRIPTION_HEARTBEAT_FIELDS))
    subscription_id = request.match_info["id"]
    expires = await ctx.service.subscriptions.heartbeat(who, subscription_id, ttl)
    return _respond(request, {"subscriptionId": subscription_id, "expiresAt": rfc3339(expires)})


async def delete_subscription(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    await ctx.service.subscriptions.unsubscribe(who, request.match_info["id"])
    return web.Response(status=204)


async def list_subscriptions(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.worker)
    subscriptions = await ctx.service.subscriptions.list(who)
    return json_response({"subscriptions": [wire.subscription_to_wire(s) for s in subscriptions]})


# ------------------------------------------------------------ admin


async def admin_queues(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    stats = await ctx.service.admin.queues(who)
    return json_response([wire.stats_to_wire(s) for s in stats])


async def admin_queue(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    stats = await ctx.service.admin.queue(who, request.match_info["command"])
    return json_response(wire.stats_to_wire(stats))


async def admin_pause(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    command = request.match_info["command"]
    await ctx.service.admin.pause(who, command)
    return json_response({"command": command, "paused": True})


async def admin_resume(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    command = request.match_info["command"]
    await ctx.service.admin.resume(who, command)
    return json_response({"command": command, "paused": False})


async def admin_settings(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    command = request.match_info["command"]
    limit, fairness = await ctx.service.admin.settings(who, command)
    return json_response(wire.queue_settings_to_wire(command, limit, fairness))


async def admin_set_settings(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    command = request.match_info["command"]
    new_limit, new_fairness = wire.parse_queue_settings(
        await _body(request, wire.QUEUE_SETTINGS_FIELDS)
    )
    limit, fairness = await ctx.service.admin.set_settings(who, command, new_limit, new_fairness)
    return json_response(wire.queue_settings_to_wire(command, limit, fairness))


async def admin_purge(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    purged = await ctx.service.admin.purge(who, request.match_info["command"])
    return json_response({"purged": purged})


async def admin_dlq(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    unknown = wire.unknown_fields(request.query, wire.DLQ_QUERY_FIELDS)
    if unknown:
        _warn(request, "unknown query parameters ignored: " + ", ".join(unknown))
    query = wire.parse_dlq_query(request.query)
    page = await ctx.service.admin.dead_letters(who, request.match_info["command"], query)
    return _respond(request, wire.dlq_page_to_wire(page))


async def admin_redrive(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    req = wire.parse_redrive(await _body(request, wire.REDRIVE_FIELDS))
    outcome = await ctx.service.admin.redrive(who, request.match_info["command"], req)
    return _respond(request, wire.redrive_to_wire(outcome))


async def admin_tasks(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    unknown = wire.unknown_fields(request.query, wire.TASK_LIST_QUERY_FIELDS)
    if unknown:
        _warn(request, "unknown query parameters ignored: " + ", ".join(unknown))
    query = wire.parse_task_list_query(request.query)
    command = request.match_info["command"]
    page = await ctx.service.admin.tasks(who, command, query)
    return _respond(request, wire.task_page_to_wire(command, query.state, page))


async def admin_requeue(request: web.Request) -> web.Response:
    """The task back in line ("requeued"), or CANCELLED when its cancel was requested."""
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    reason = wire.parse_end_lease(await _body(request, wire.END_LEASE_FIELDS))
    task, requeued = await ctx.service.admin.requeue(who, request.match_info["id"], reason)
    _bind_task(task)
    status = "requeued" if requeued else "cancelled"
    return _respond(request, {"status": status, "task": wire.task_to_wire(task)})


async def admin_fail(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    reason = wire.parse_end_lease(await _body(request, wire.END_LEASE_FIELDS))
    task = await ctx.service.admin.fail(who, request.match_info["id"], reason)
    _bind_task(task)
    return _respond(request, {"status": "failed", "task": wire.task_to_wire(task)})


async def admin_cleanup(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    limit, before = wire.parse_cleanup(await _body(request, wire.CLEANUP_FIELDS))
    deleted, cutoff = await ctx.service.admin.cleanup(who, before_ms=before, limit=limit)
    expired_before = cutoff + ctx.service.admin.retention_ms  # `before` as given, or now
    body = {"deleted": deleted, "before": rfc3339(expired_before), "limit": limit}
    return _respond(request, body | {"endedBefore": rfc3339(cutoff)})


async def admin_callbacks(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    unknown = wire.unknown_fields(request.query, wire.CALLBACKS_QUERY_FIELDS)
    if unknown:
        _warn(request, "unknown query parameters ignored: " + ", ".join(unknown))
    limit = wire.parse_callbacks_limit(request.query)
    callbacks = await ctx.service.admin.abandoned_callbacks(who, limit)
    return _respond(request, {"abandoned": [wire.callback_to_wire(c) for c in callbacks]})


# ------------------------------------------------------------ recurring schedules


async def admin_schedule_put(request: web.Request) -> web.Response:
    """201 with the new schedule, 200 with the replaced one."""
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    spec = wire.parse_schedule(
        request.match_info["schedule"], await _body(request, wire.SCHEDULE_FIELDS)
    )
    schedule, created = await ctx.service.schedules.put(who, spec)
    return _respond(request, wire.schedule_to_wire(schedule), 201 if created else 200)


async def admin_schedule_get(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    schedule = await ctx.service.schedules.get(who, request.match_info["schedule"])
    return json_response(wire.schedule_to_wire(schedule))


async def admin_schedules(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    schedules = await ctx.service.schedules.list(who)
    return json_response({"schedules": [wire.schedule_to_wire(s) for s in schedules]})


async def admin_schedule_delete(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    name = request.match_info["schedule"]
    await ctx.service.schedules.delete(who, name)
    return json_response({"name": name, "deleted": True})


async def admin_schedule_pause(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    schedule = await ctx.service.schedules.pause(who, request.match_info["schedule"])
    return json_response(wire.schedule_to_wire(schedule))


async def admin_schedule_resume(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    schedule = await ctx.service.schedules.resume(who, request.match_info["schedule"])
    return json_response(wire.schedule_to_wire(schedule))


async def admin_schedule_run(request: web.Request) -> web.Response:
    """Run now: the schedule's task, made at once (202, as a create)."""
    ctx = request.app[CTX]
    who = await _caller(request, ctx.auth.anyone)
    task = await ctx.service.schedules.run(who, request.match_info["schedule"])
    _bind_task(task)
    return json_response(wire.task_to_wire(task), 202)


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(openapi.document())


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    report = await request.app[CTX].readiness()
    return json_response(report, 200 if report["status"] == "ready" else 503)


async def metrics_exposition(request: web.Request) -> web.Response:
    expose = request.app[CTX].metrics
    if expose is None:
        raise NotFound("metrics are off (metricsEnabled: false)")
    body, content_type = await expose()
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_app(ctx: TransportContext) -> web.Application:
    app = web.Application(
        middlewares=[errors_and_request_id], client_max_size=ctx.config.max_body_bytes
    )
    app[CTX] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_exposition)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_post(f"{PREFIX}/tasks", create_task)
    app.router.add_post(f"{PREFIX}/tasks/claim", claim_task)
    app.router.add_post(f"{PREFIX}/tasks/batch", create_batch)
    app.router.add_post(f"{PREFIX}/tasks/claim/batch", claim_batch)
    app.router.add_post(f"{PREFIX}/tasks/batch/results", results_batch)
    app.router.add_post(f"{PREFIX}/tasks/{{id}}/heartbeat", heartbeat)
    app.router.add_post(f"{PREFIX}/tasks/{{id}}/abandon", abandon)
    app.router.add_post(f"{PREFIX}/tasks/{{id}}/nack", nack)
    app.router.add_post(f"{PREFIX}/tasks/{{id}}/result", submit_result)
    # /tasks/claim and /tasks/batch are POST-only paths, not ids: a GET there is 405
    app.router.add_get(f"{PREFIX}/tasks/{{id:(?!claim$|batch$)[^/]+}}", get_task)
    app.router.add_get(f"{PREFIX}/tasks/{{id}}/result", get_result)
    app.router.add_get(f"{PREFIX}/tasks/{{id}}/history", get_history)
    app.router.add_get(f"{PREFIX}/tasks/{{id}}/artifacts/{{name}}", get_artifact)
    app.router.add_post(f"{PREFIX}/tasks/{{id}}/cancel", cancel_task)
    subscriptions = f"{PREFIX}/workers/subscriptions"
    app.router.add_post(subscriptions, create_subscription)
    app.router.add_get(subscriptions, list_subscriptions)
    app.router.add_post(f"{subscriptions}/{{id}}/heartbeat", subscription_heartbeat)
    app.router.add_delete(f"{subscriptions}/{{id}}", delete_subscription)
    admin = f"{PREFIX}/admin"
    app.router.add_get(f"{admin}/queues", admin_queues)
    app.router.add_get(f"{admin}/queues/{{command}}", admin_queue)
    app.router.add_get(f"{admin}/queues/{{command}}/stats", admin_queue)  # codeQ's older path
    app.router.add_post(f"{admin}/queues/{{command}}/pause", admin_pause)
    app.router.add_post(f"{admin}/queues/{{command}}/resume", admin_resume)
    app.router.add_post(f"{admin}/queues/{{command}}/purge", admin_purge)
    app.router.add_get(f"{admin}/queues/{{command}}/settings", admin_settings)
    app.router.add_post(f"{admin}/queues/{{command}}/settings", admin_set_settings)
    app.router.add_get(f"{admin}/queues/{{command}}/dlq", admin_dlq)
    app.router.add_post(f"{admin}/queues/{{command}}/dlq/redrive", admin_redrive)
    app.router.add_get(f"{admin}/queues/{{command}}/tasks", admin_tasks)
    app.router.add_post(f"{admin}/tasks/{{id}}/requeue", admin_requeue)
    app.router.add_post(f"{admin}/tasks/{{id}}/fail", admin_fail)
    app.router.add_post(f"{admin}/tasks/cleanup", admin_cleanup)
    app.router.add_get(f"{admin}/callbacks", admin_callbacks)
    schedule = f"{admin}/schedules/{{schedule}}"
    app.router.add_get(f"{admin}/schedules", admin_schedules)
    app.router.add_put(schedule, admin_schedule_put)
    app.router.add_get(schedule, admin_schedule_get)
    app.router.add_delete(schedule, admin_schedule_delete)
    app.router.add_post(f"{schedule}/pause", admin_schedule_pause)
    app.router.add_post(f"{schedule}/resume", admin_schedule_resume)
    app.router.add_post(f"{schedule}/run", admin_schedule_run)
    return app


class HttpTransport:
    """codeQ's v1 HTTP API on a TCP port and/or a Unix socket (unixSocketPath)."""

    name = "http"

    def __init__(self, context: TransportContext) -> None:
        self._ctx = context
        self._runner: web.AppRunner | None = None
        self._sites: list[web.BaseSite] = []
        self._unix: UnixListener | None = None

    async def start(self) -> list[str]:
        config = self._ctx.config
        addresses: list[str] = []
        if config.unix_socket_path is not None:
            # First: a socket in use refuses the start before anything listens.
            self._unix = listen_unix(
                config.unix_socket_path, config.unix_socket_mode, config.unix_socket_group
            )
        app = build_app(self._ctx)
        guard = ConnectionGuard(
            self.name,
            max_connections=config.http_max_connections,
            header_timeout=config.http_header_timeout_seconds,
        )
        app[GUARD] = guard
        self._runner = GuardedRunner(
            app,
            guard,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=config.shutdown_grace_seconds,
            keepalive_timeout=config.http_idle_timeout_seconds,
            lingering_time=LINGER_SECONDS,
        )
        try:
            await self._runner.setup()
            if config.tcp_enabled:
                # Several worker processes (codeq serve --workers N) share the port.
                site = web.TCPSite(
                    self._runner,
                    config.bind_address,
                    config.port,
                    reuse_address=True,
                    reuse_port=config.workers > 1 or None,
                )
                await site.start()
                self._sites.append(site)
                addresses.append(_address(site))
            if self._unix is not None:
                unix_site = web.SockSite(self._runner, self._unix.sock)
                await unix_site.start()
                self._sites.append(unix_site)
                addresses.append(self._unix.address)
        except BaseException:
            await self.stop_accepting()
            await self.drain(0)
            raise
        return addresses

    @property
    def port(self) -> int:
        """The bound TCP port (useful when configured as 0)."""
        site = next(site for site in self._sites if isinstance(site, web.TCPSite))
        server = site._server
        assert server is not None and hasattr(server, "sockets")
        return int(server.sockets[0].getsockname()[1])

    async def stop_accepting(self) -> None:
        for site in self._sites:
            await site.stop()
        self._sites.clear()
        if self._unix is not None:
            self._unix.close()
            self._unix = None

    async def drain(self, timeout: float) -> None:
        # The runner was built with shutdown_timeout = the configured grace period.
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _address(site: web.TCPSite) -> str:
    server = site._server
    assert server is not None and hasattr(server, "sockets")
    host, port = server.sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"
