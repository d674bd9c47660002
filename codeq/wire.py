"""codeQ's JSON wire format: request bodies parsed into domain requests, domain
objects encoded as responses. Shared by every transport, so HTTP and streams
validate identically. Errors name the field and the problem."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import orjson

from codeq.artifacts import CONTENT_TYPE_RE
from codeq.artifacts import NAME_RE as ARTIFACT_NAME_RE
from codeq.domain import (
    COMMAND_RE,
    MAX_DELAY_SECONDS,
    MAX_LEASE_SECONDS,
    MAX_RESULT_WAIT_SECONDS,
    MAX_TRACESTATE,
    MAX_WAIT_SECONDS,
    TASK_ID_RE,
    Artifact,
    Callback,
    ClaimRequest,
    CodeqError,
    Conflict,
    DeadLetter,
    DeliveryMode,
    DlqPage,
    DlqPosition,
    DlqQuery,
    Forbidden,
    HistoryEntry,
    InlineArtifact,
    Invalid,
    NackOutcome,
    NewSubscription,
    NewTask,
    NotFound,
    QueueStats,
    RedriveOutcome,
    RedriveRequest,
    Result,
    ResultSubmission,
    Status,
    Subscription,
    Task,
    TooLarge,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    clamp_priority,
    rfc3339,
    trace_parent_problem,
    trace_state_problem,
)

Body = Mapping[str, Any]

# The status code of each domain error: the HTTP status, which the other transports
# use too (a WebSocket error frame's "code", a batch item's "code").
ERROR_STATUS: Mapping[type[CodeqError], int] = {
    Invalid: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    TooManyRequests: 429,
    Unavailable: 503,
}

CREATE_FIELDS = frozenset(
    {
        "command",
        "payload",
        "priority",
        "maxAttempts",
        "webhook",
        "idempotencyKey",
        "runAt",
        "delaySeconds",
        "traceParent",
        "traceState",
    }
)
CLAIM_FIELDS = frozenset({"commands", "leaseSeconds", "waitSeconds"})
HEARTBEAT_FIELDS = frozenset({"extendSeconds", "leaseToken"})
NACK_FIELDS = frozenset({"delaySeconds", "reason", "leaseToken"})
ABANDON_FIELDS = frozenset({"leaseToken"})
RESULT_FIELDS = frozenset({"status", "result", "error", "artifacts", "leaseToken"})
CANCEL_FIELDS = frozenset({"reason"})
CLEANUP_FIELDS = frozenset({"limit", "before"})
REDRIVE_FIELDS = frozenset({"ids", "error", "all", "limit", "ratePerSecond", "dryRun"})
DLQ_QUERY_FIELDS = frozenset({"cursor", "limit", "error", "olderThanSeconds", "newerThanSeconds"})
SUBSCRIBE_FIELDS = frozenset(
    {"callbackUrl", "eventTypes", "ttlSeconds", "deliveryMode", "groupId", "minIntervalSeconds"}
)
SUBSCRIPTION_HEARTBEAT_FIELDS = frozenset({"ttlSeconds"})
CALLBACKS_QUERY_FIELDS = frozenset({"limit"})
MAX_EVENT_TYPES = 100
MAX_BATCH = 1000
BATCH_CREATE_FIELDS = frozenset({"tasks"})
BATCH_CLAIM_FIELDS = CLAIM_FIELDS | {"count"}
BATCH_RESULTS_FIELDS = frozenset({"results"})
BATCH_RESULT_ITEM_FIELDS = RESULT_FIELDS | {"taskId"}
MAX_CLEANUP_LIMIT = 10_000
MAX_REDRIVE = 10_000
MAX_DLQ_PAGE = 1000
MAX_TEXT = 4096


def unknown_fields(body: Body, known: frozenset[str]) -> list[str]:
    """Fields codeq ignores (as codeQ does) but names back, so typos are noticed."""
    return sorted(k for k in body if k not in known)


# How deeply a request body may nest. orjson writes at most 254 levels, and what a
# client sends comes back inside answers a few levels deeper (a result inside a batch
# answer), so deeper bodies are refused where they come in, not where they go out.
MAX_JSON_DEPTH = 128
_ORJSON_MAX_DEPTH = 254


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body: empty means {}, anything but a JSON object (or one nested
    deeper than MAX_JSON_DEPTH) is rejected."""
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise Invalid("request body must be a JSON object")
    check_depth(body, raw)
    return body


def check_depth(value: Any, raw: bytes) -> None:
    """Raises Invalid when `value` (parsed from `raw`) nests deeper than
    MAX_JSON_DEPTH. Few brackets cannot nest deep (a C-speed count); otherwise
    orjson, asked to write it inside the levels that leave it MAX_JSON_DEPTH, says
    whether it fits."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return
    for _ in range(_ORJSON_MAX_DEPTH - MAX_JSON_DEPTH):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise Invalid(f"JSON nests deeper than {MAX_JSON_DEPTH} levels") from None


# ------------------------------------------------------------ field readers


def _int(body: Body, name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise Invalid(f"{name} must be an integer", field=name)
    if not lo <= value <= hi:
        raise Invalid(f"{name} must be between {lo} and {hi}, got {value}", field=name)
    return int(value)


def _number(body: Body, name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{name} must be a number", field=name)
    if not lo <= value <= hi:
        raise Invalid(f"{name} must be between {lo} and {hi}, got {value}", field=name)
    return float(value)


def _text(body: Body, name: str, *, max_len: int = MAX_TEXT, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise Invalid(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string", field=name)
    if len(value) > max_len:
        raise Invalid(f"{name} must be at most {max_len} characters", field=name)
    return value


def _trace(body: Body, name: str, problem: Callable[[str], str | None]) -> str | None:
    """A W3C Trace Context field: it goes on in callback headers, so it is checked
    here, not where it would break a delivery."""
    value = _text(body, name, max_len=MAX_TRACESTATE)
    if value is not None and (why := problem(value)):
        raise Invalid(f"{name} {why}", field=name)
    return value


def _url(body: Body, name: str) -> str | None:
    url = _text(body, name, max_len=2048)
    if url is not None:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 bracket
            raise Invalid(f"{name} is not a valid URL: {exc}", field=name) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Invalid(f"{name} must be an http or https URL", field=name)
    return url


def _time_ms(body: Body, name: str) -> int | None:
    value = _text(body, name, max_len=64)
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise Invalid(f"{name} must be an RFC 3339 timestamp, got {value!r}", field=name) from exc
    if at.tzinfo is None:
        raise Invalid(f"{name} must include a time zone offset (e.g. Z)", field=name)
    return int(at.timestamp() * 1000)


# ------------------------------------------------------------ requests


def parse_create(body: Body) -> NewTask:
    command = _text(body, "command", max_len=128, required=True)
    assert command is not None
    if not COMMAND_RE.match(command):
        raise Invalid("command may only contain letters, digits and _ . : -", field="command")
    payload = body.get("payload")
    if payload is None:  # codeQ binds it as required; any other JSON value is kept
        raise Invalid("payload is required (any JSON value but null, e.g. {})", field="payload")
    priority = _int(body, "priority", -(2**31), 2**31 - 1)
    delay = _number(body, "delaySeconds", 0, MAX_DELAY_SECONDS)
    return NewTask(
        command=command,
        payload=orjson.dumps(payload).decode(),
        priority=clamp_priority(priority or 0),
        max_attempts=_int(body, "maxAttempts", 1, 1000),
        webhook=_url(body, "webhook"),
        idempotency_key=_text(body, "idempotencyKey", max_len=256),
        run_at_ms=_time_ms(body, "runAt"),
        delay_seconds=delay,
        trace_parent=_trace(body, "traceParent", trace_parent_problem),
        trace_state=_trace(body, "traceState", trace_state_problem),
    )


def parse_claim(body: Body, warnings: list[str] | None = None) -> ClaimRequest:
    """A claim; a waitSeconds outside 0..30 is clamped as codeQ does (≤ 0: no wait),
    and the clamp named in `warnings`."""
    commands = body.get("commands", [])
    if commands is None:
        commands = []
    if not isinstance(commands, list) or not all(isinstance(c, str) and c for c in commands):
        raise Invalid("commands must be a list of command names", field="commands")
    if len(commands) > 100:
        raise Invalid("commands may name at most 100 commands", field="commands")
    for command in commands:
        if not COMMAND_RE.match(command):
            raise Invalid(f"commands: invalid command name {command!r}", field="commands")
    return ClaimRequest(
        commands=tuple(commands),
        lease_seconds=_int(body, "leaseSeconds", 1, MAX_LEASE_SECONDS),
        wait_seconds=_clamped_wait(
            _number(body, "waitSeconds", -math.inf, math.inf), MAX_WAIT_SECONDS, warnings
        ),
    )


def _clamped_wait(value: float | None, most: float, warnings: list[str] | None) -> float:
    if value is None:
        return 0.0
    clamped = min(max(value, 0.0), most)
    if clamped != value and warnings is not None:
        warnings.append(f"waitSeconds {value:g} clamped to {clamped:g} (0..{most:g})")
    return clamped


def parse_lease_token(body: Body, header: str | None) -> str | None:
    """The fencing token, from the X-Lease-Token header or the body."""
    return header or _text(body, "leaseToken", max_len=128)


def parse_extend_seconds(body: Body) -> int | None:
    return _int(body, "extendSeconds", 1, MAX_LEASE_SECONDS)


def parse_nack(body: Body) -> tuple[int | None, str]:
    """The delay override (seconds) and the reason of a nack."""
    delay = _int(body, "delaySeconds", 0, MAX_DELAY_SECONDS)
    return delay, _text(body, "reason", max_len=1024) or ""


def parse_result(body: Body) -> ResultSubmission:
    raw_status = body.get("status")
    if raw_status not in ("COMPLETED", "FAILED"):
        raise Invalid("status must be COMPLETED or FAILED", field="status")
    status = Status(raw_status)
    result = body.get("result")
    if result is not None and not isinstance(result, dict):
        raise Invalid("result must be a JSON object", field="result")
    error = _text(body, "error", max_len=MAX_TEXT)
    if status is Status.COMPLETED and result is None:
        raise Invalid("result is required when status is COMPLETED", field="result")
    if status is Status.FAILED and error is None:
        raise Invalid("error is required when status is FAILED", field="error")
    return ResultSubmission(status, result, error, _artifacts(body.get("artifacts")))


def _artifacts(raw: Any) -> tuple[Artifact | InlineArtifact, ...]:
    """A result's artifacts: {name, url} references, or {name, contentBase64,
    contentType} content for the daemon to store (codeQ's uploader)."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > 100:
        raise Invalid("artifacts must be a list of at most 100 items", field="artifacts")
    out: list[Artifact | InlineArtifact] = []
    for item in raw:
        if not isinstance(item, dict):
            raise Invalid(
                "each artifact must be an object: {name, url} or {name, contentBase64, "
                "contentType}",
                field="artifacts",
            )
        if "contentBase64" in item:
            out.append(_inline_artifact(item))
            continue
        name = _text(item, "name", max_len=256, required=True)
        url = _url(item, "url")
        if url is None:
            raise Invalid("each artifact needs a url (or contentBase64)", field="artifacts")
        assert name is not None
        out.append(Artifact(name=name, url=url))
    names = [a.name for a in out if isinstance(a, InlineArtifact)]
    if len(set(names)) < len(names):
        raise Invalid("inline artifacts need distinct names", field="artifacts")
    return tuple(out)


def _inline_artifact(item: dict[str, Any]) -> InlineArtifact:
    name = item.get("name")
    if not isinstance(name, str) or not ARTIFACT_NAME_RE.fullmatch(name):
        raise Invalid(
            "an inline artifact's name must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field="artifacts",
        )
    encoded = item["contentBase64"]
    try:
        if not isinstance(encoded, str):
            raise ValueError
        content = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        problem = f"artifact {name!r}: contentBase64 is not base64"
        raise Invalid(problem, field="artifacts") from None
    content_type = item.get("contentType", "application/octet-stream")
    if not isinstance(content_type, str) or not CONTENT_TYPE_RE.fullmatch(content_type):
        raise Invalid(
            f"artifact {name!r}: contentType must be a media type like 'image/png'",
            field="artifacts",
        )
    return InlineArtifact(name=name, content=content, content_type=content_type)


# ------------------------------------------------------------ responses


def task_to_wire(task: Task, *, with_lease_token: bool = False) -> dict[str, Any]:
    """A task in codeQ's JSON shape; empty fields are omitted as codeQ's omitempty does.
    The lease token is shown only to the worker that claimed the task."""
    wire: dict[str, Any] = {
        "id": task.id,
        "command": task.command,
        "payload": task.payload,
        "priority": task.priority,
        "status": task.status.value,
        "attempts": task.attempts,
        "maxAttempts": task.max_attempts,
        "tenantId": task.tenant_id,
        "createdAt": rfc3339(task.created_at_ms),
        "updatedAt": rfc3339(task.updated_at_ms),
    }
    optional = {
        "webhook": task.webhook,
        "workerId": task.worker_id,
        "leaseUntil": rfc3339(task.lease_until_ms),
        "error": task.error,
        "runAt": rfc3339(task.run_at_ms),
        "idempotencyKey": task.idempotency_key,
        "traceParent": task.trace_parent,
        "traceState": task.trace_state,
        "retryReason": task.extra.get("retryReason") or None,
        "lastError": task.extra.get("lastError") or None,
        "redriveCount": int(task.extra["redriveCount"]) if task.extra.get("redriveCount") else None,
        "cancelRequested": True if task.cancel_requested else None,
    }
    if with_lease_token:
        optional["leaseToken"] = task.lease_token
    wire.update((k, v) for k, v in optional.items() if v is not None)
    return wire


def result_to_wire(result: Result) -> dict[str, Any]:
    return {
        "taskId": result.task_id,
        "status": result.status.value,
        "result": result.result,
        "error": result.error,
        "artifacts": [{"name": a.name, "url": a.url} for a in result.artifacts],
        "completedAt": rfc3339(result.completed_at_ms),
    }


def nack_to_wire(outcome: NackOutcome) -> dict[str, Any]:
    if outcome.dead_lettered:  # codeQ's answer, which its SDKs read
        return {"status": "dlq", "delaySeconds": 0, "error": "MAX_ATTEMPTS"}
    if outcome.cancelled:
        return {"status": "cancelled"}
    return {"status": "requeued", "delaySeconds": outcome.delay_seconds}


_HISTORY_TIMES = ("leaseUntil", "lastHeartbeatAt", "runAt")


def history_to_wire(entries: list[HistoryEntry]) -> list[dict[str, Any]]:
    """A task's timeline; times stored as epoch ms are shown as RFC 3339."""
    out = []
    for entry in entries:
        detail = dict(entry.detail)
        for name in _HISTORY_TIMES:
            value = detail.get(name)
            if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
                detail[name] = rfc3339(int(value))
        out.append({"at": rfc3339(entry.at_ms), "event": entry.event, **detail})
    return out


# ------------------------------------------------------------ cancel and admin


def parse_cancel(body: Body) -> str:
    """The optional reason of a cancel, kept in the task's history."""
    return _text(body, "reason", max_len=1024) or ""


def parse_cleanup(body: Body) -> tuple[int, int | None]:
    """The limit (default 1000) and the cutoff (epoch ms; None = the retention
    default) of an admin cleanup."""
    limit = _int(body, "limit", 1, MAX_CLEANUP_LIMIT)
    return (1000 if limit is None else limit), _time_ms(body, "before")


def _bool(body: Body, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise Invalid(f"{name} must be true or false", field=name)
    return value


def parse_redrive(body: Body) -> RedriveRequest:
    """Exactly one of `ids`, `error` or `all: true` says which tasks move."""
    ids = body.get("ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise Invalid("ids must be a list of task ids", field="ids")
        if not 1 <= len(ids) <= MAX_REDRIVE:
            raise Invalid(f"ids must name 1 to {MAX_REDRIVE} tasks", field="ids")
        for task_id in ids:
            if not TASK_ID_RE.match(task_id):
                raise Invalid(f"ids: invalid task id {task_id!r}", field="ids")
    error = _text(body, "error", max_len=1024)
    every = _bool(body, "all")
    chosen = [name for name, given in (("ids", ids), ("error", error), ("all", every)) if given]
    if len(chosen) != 1:
        raise Invalid(
            "give exactly one of ids, error or all: true"
            + (f" (got {', '.join(chosen)})" if chosen else ""),
            field=chosen[-1] if chosen else "ids",
        )
    limit = _int(body, "limit", 1, MAX_REDRIVE)
    return RedriveRequest(
        ids=tuple(ids or ()),
        error=error,
        all=every,
        limit=100 if limit is None else limit,
        rate_per_second=_number(body, "ratePerSecond", 0.1, 100_000),
        dry_run=_bool(body, "dryRun"),
    )


def _query_int(query: Mapping[str, str], name: str, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer, got {raw!r}", field=name) from None
    if not lo <= value <= hi:
        raise Invalid(f"{name} must be between {lo} and {hi}, got {value}", field=name)
    return value


def parse_dlq_query(query: Mapping[str, str]) -> DlqQuery:
    """The query string of a DLQ listing: cursor, limit (100, at most 1000), error,
    olderThanSeconds, newerThanSeconds."""
    limit = _query_int(query, "limit", 1, MAX_DLQ_PAGE)
    error = query.get("error") or None
    if error is not None and len(error) > 1024:
        raise Invalid("error must be at most 1024 characters", field="error")
    return DlqQuery(
        limit=100 if limit is None else limit,
        cursor=decode_cursor(query["cursor"]) if query.get("cursor") else None,
        error=error,
        older_than_seconds=_query_int(query, "olderThanSeconds", 0, 100 * 365 * 86_400),
        newer_than_seconds=_query_int(query, "newerThanSeconds", 0, 100 * 365 * 86_400),
    )


def encode_cursor(position: DlqPosition | None) -> str | None:
    """An opaque, URL-safe cursor for a DLQ position."""
    if position is None:
        return None
    raw = f"{position.score}:{position.task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> DlqPosition:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, task_id = raw.partition(":")
        position = DlqPosition(int(score), task_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Invalid("cursor is not one this server returned", field="cursor") from None
    if position.score < 0 or not TASK_ID_RE.match(position.task_id):
        raise Invalid("cursor is not one this server returned", field="cursor")
    return position


def stats_to_wire(stats: QueueStats) -> dict[str, Any]:
    """codeQ's QueueStats, plus `paused`."""
    return {
        "command": stats.command,
        "ready": stats.ready,
        "delayed": stats.delayed,
        "inProgress": stats.in_progress,
        "dlq": stats.dlq,
        "paused": stats.paused,
    }


def dead_letter_to_wire(item: DeadLetter) -> dict[str, Any]:
    return {**task_to_wire(item.task), "deadLetteredAt": rfc3339(item.dead_lettered_at_ms)}


def dlq_page_to_wire(page: DlqPage) -> dict[str, Any]:
    return {
        "tasks": [dead_letter_to_wire(item) for item in page.items],
        "nextCursor": encode_cursor(page.next_cursor),
    }


def redrive_to_wire(outcome: RedriveOutcome) -> dict[str, Any]:
    return {
        "redriven": len(outcome.ids),
        "ids": outcome.ids,
        "skipped": outcome.skipped,
        "dryRun": outcome.dry_run,
    }


# ------------------------------------------------------------ subscriptions


def parse_subscribe(body: Body) -> NewSubscription:
    url = _url(body, "callbackUrl")
    if url is None:
        raise Invalid("callbackUrl is required", field="callbackUrl")
    types = body.get("eventTypes", [])
    if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
        raise Invalid("eventTypes must be a list of command names", field="eventTypes")
    if len(types) > MAX_EVENT_TYPES:
        raise Invalid(f"eventTypes may list at most {MAX_EVENT_TYPES} commands", field="eventTypes")
    mode = _text(body, "deliveryMode", max_len=16) or DeliveryMode.FANOUT.value
    if mode not in {m.value for m in DeliveryMode}:
        raise Invalid(
            f"deliveryMode must be one of fanout, group, hash, got {mode!r}", field="deliveryMode"
        )
    return NewSubscription(
        callback_url=url,
        event_types=tuple(types),
        ttl_seconds=_int(body, "ttlSeconds", -(2**31), 2**31 - 1),
        delivery_mode=DeliveryMode(mode),
        group_id=_text(body, "groupId", max_len=128),
        min_interval_seconds=_number(body, "minIntervalSeconds", 0, 86_400),
    )


def parse_subscription_ttl(body: Body) -> int | None:
    return _int(body, "ttlSeconds", -(2**31), 2**31 - 1)


def subscription_to_wire(sub: Subscription) -> dict[str, Any]:
    """codeQ's answer ({subscriptionId, expiresAt}) plus the stored subscription."""
    wire: dict[str, Any] = {
        "subscriptionId": sub.id,
        "expiresAt": rfc3339(sub.expires_at_ms),
        "id": sub.id,
        "callbackUrl": sub.callback_url,
        "eventTypes": list(sub.event_types),
        "deliveryMode": sub.delivery_mode.value,
        "minIntervalSeconds": sub.min_interval_seconds,
        "createdAt": rfc3339(sub.created_at_ms),
        "workerId": sub.worker_id,
    }
    if sub.group_id:
        wire["groupId"] = sub.group_id
    return wire


def parse_result_wait(query: Mapping[str, str], warnings: list[str] | None = None) -> float:
    """GET /tasks/{id}/result?waitSeconds=N: how long to wait for the task to end;
    as codeQ, 0..60 with larger values capped to 60 and bad or ≤ 0 ones meaning no
    wait (named in `warnings`)."""
    raw = query.get("waitSeconds")
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        if warnings is not None:
            warnings.append(f"waitSeconds {raw!r} is not a number: no wait")
        return 0.0
    return _clamped_wait(value, MAX_RESULT_WAIT_SECONDS, warnings)


def parse_callbacks_limit(query: Mapping[str, str]) -> int:
    return _query_int(query, "limit", 1, MAX_DLQ_PAGE) or 100


def callback_to_wire(callback: Callback) -> dict[str, Any]:
    return {
        "id": callback.id,
        "taskId": callback.task_id,
        "url": callback.url,
        "command": callback.command,
        "status": callback.record.get("status"),
        "attempts": callback.attempts,
        "lastError": callback.last_error,
        "createdAt": rfc3339(callback.created_at_ms),
        "abandonedAt": rfc3339(callback.abandoned_at_ms),
    }


# ------------------------------------------------------------ batches


def _batch_items(body: Body, name: str) -> list[Any]:
    items = body.get(name)
    if not isinstance(items, list):
        raise Invalid(f"{name} must be a list", field=name)
    if not 1 <= len(items) <= MAX_BATCH:
        raise Invalid(f"{name} must hold 1 to {MAX_BATCH} items, got {len(items)}", field=name)
    return items


def _item(parse: Any, raw: Any, index: int) -> Any:
    """One batch item parsed, or its Invalid (naming the item) for the item's answer."""
    if not isinstance(raw, dict):
        return Invalid(f"item {index} must be a JSON object", index=index)
    try:
        return parse(raw)
    except Invalid as exc:
        return Invalid(exc.message, index=index, **exc.extra)


def batch_unknown_fields(body: Body, name: str, known: frozenset[str]) -> list[str]:
    """Unknown fields of the batch's items, as "tasks[3].delay_seconds"."""
    found = []
    items = body.get(name)
    for index, raw in enumerate(items if isinstance(items, list) else ()):
        if isinstance(raw, dict):
            found += [f"{name}[{index}].{field}" for field in unknown_fields(raw, known)]
    return found[:20]


def parse_batch_create(body: Body) -> list[NewTask | Invalid]:
    """The create bodies of POST /tasks/batch; a bad item is its own Invalid."""
    items = _batch_items(body, "tasks")
    return [_item(parse_create, raw, i) for i, raw in enumerate(items)]


def parse_batch_claim(body: Body) -> tuple[ClaimRequest, int]:
    count = _int(body, "count", 1, MAX_BATCH)
    return parse_claim(body), 1 if count is None else count


def _result_item(raw: Body) -> tuple[str, str | None, ResultSubmission]:
    task_id = _text(raw, "taskId", max_len=64, required=True)
    assert task_id is not None
    return task_id, parse_lease_token(raw, None), parse_result(raw)


def parse_batch_results(body: Body) -> list[tuple[str, str | None, ResultSubmission] | Invalid]:
    """The items of POST /tasks/batch/results; a bad item is its own Invalid."""
    items = _batch_items(body, "results")
    return [_item(_result_item, raw, i) for i, raw in enumerate(items)]


def error_item(exc: CodeqError, status: int) -> dict[str, Any]:
    """A batch item's failure: codeQ's {"error"} plus its HTTP-like status code."""
    return {"error": exc.message, "code": status, **exc.extra}
