"""codeQ's JSON wire format: request bodies parsed into domain requests, domain
objects encoded as responses. Shared by every transport, so HTTP and streams
validate identically. Errors name the field and the problem."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import available_timezones

import orjson

from codeq.artifacts import NAME_RE as ARTIFACT_NAME_RE
from codeq.config import WEEK_SECONDS
from codeq.domain import (
    COMMAND_RE,
    MAX_DELAY_SECONDS,
    MAX_LEASE_SECONDS,
    MAX_RESULT_WAIT_SECONDS,
    MAX_TRACESTATE,
    MAX_WAIT_SECONDS,
    OPAQUE_ID_RE,
    TASK_ID_RE,
    TRACEPARENT_RE,
    TRACESTATE_MEMBER_RE,
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
    TaskListQuery,
    TaskPage,
    TaskState,
    TooLarge,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    clamp_priority,
    replay_differences,
    rfc3339,
    trace_parent_problem,
    trace_state_problem,
)
from codeq.schedules import DEFAULT_MISFIRE_GRACE_SECONDS, Schedule, ScheduleSpec

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

MAX_EVENT_TYPES = 100
MAX_BATCH = 1000
MAX_CLEANUP_LIMIT = 10_000
MAX_REDRIVE = 10_000
MAX_DLQ_PAGE = 1000
MAX_TEXT = 4096
MAX_AGE_SECONDS = 100 * 365 * 86_400
MAX_SUBSCRIPTION_TTL_SECONDS = WEEK_SECONDS  # the largest subscriptionMaxTtlSeconds a config takes
_INT32 = (-(2**31), 2**31 - 1)


# ------------------------------------------------------------ what each body holds


@dataclass(frozen=True, slots=True)
class Field:
    """What one request field may hold, declared once: the readers below check values
    against it and codeq.openapi renders it as the field's JSON Schema, so the two
    cannot drift. A nullable field reads null as absent (codeQ's omitempty), and, if
    it is a string, "" too."""

    type: str  # a JSON Schema type, or "any" (any JSON value but null)
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None  # characters of a string, items of an array
    min_items: int = 0
    pattern: str | None = None  # what the whole string matches (Python and ECMA-262 alike)
    enum: tuple[str, ...] = ()
    items: Field | None = None
    ref: str | None = None  # an object described by the document's schema of this name
    required: bool = False
    nullable: bool = True
    format: str | None = None  # the string's form, as the document names it
    description: str | None = None

    def matches(self, value: str) -> bool:
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None


@dataclass(frozen=True, slots=True)
class Shape:
    """A request body or query string: its fields and the rules across them."""

    fields: Mapping[str, Field]
    # (field, value) -> the field that value makes required, e.g. a FAILED result's error
    needs: Mapping[tuple[str, str], str] = dataclass_field(default_factory=dict)
    exactly_one: tuple[str, ...] = ()  # exactly one of these fields is given

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.fields)

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]


def _whole(regex: re.Pattern[str]) -> str:
    """A ^…$ domain regex as a Field pattern, matched whole (not up to a final newline)."""
    return regex.pattern.removeprefix("^").removesuffix("$")


# http or https with a host name: urlsplit's hostname is not empty.
_URL_PATTERN = (
    r"[Hh][Tt][Tt][Pp][Ss]?://(?:[^/?#@]*@)?(?:\[[^\]/?#@]+\]|[^/?#@:\[\]]+)"
    r"(?::(?:[0-9]{0,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?"
    r"(?:[/?#].*)?"
)
_BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
_TOKEN = r"[A-Za-z0-9_.+-]"  # CONTENT_TYPE_RE's \w, in ASCII (as JSON Schema reads \w)
_CONTENT_TYPE = rf"{_TOKEN}{{1,63}}/{_TOKEN}{{1,63}}(?:; ?{_TOKEN}{{1,31}}={_TOKEN}{{1,63}}){{0,3}}"

# W3C Trace Context, as trace_parent_problem and trace_state_problem check it: a
# version-00 traceparent is exactly 55 characters; a tracestate is up to 32 members.
_TRACEPARENT = rf"(?!00.{{54}}){_whole(TRACEPARENT_RE)}"
_MEMBER = _whole(TRACESTATE_MEMBER_RE)
_TRACESTATE = rf"[ \t,]*(?:(?:{_MEMBER})[ \t]*(?:,[ \t,]*(?:{_MEMBER})[ \t]*){{0,31}})?[ \t,]*"

_COMMAND = Field(
    "string", pattern=_whole(COMMAND_RE), nullable=False, description="letters, digits, _ . : -"
)
_TASK_ID = Field("string", pattern=_whole(TASK_ID_RE), nullable=False)
_EVENT_TYPE = Field("string", pattern=rf"\*|{_whole(COMMAND_RE)}", nullable=False)
_URL = Field(
    "string",
    max_length=2048,
    pattern=_URL_PATTERN,
    format="uri",
    description="http or https; a private or loopback address is refused unless "
    "webhookAllowedHosts names it",
)
_TIME = Field("string", max_length=64, format="date-time", description="RFC 3339, with an offset")
_LEASE_TOKEN = Field(
    "string", max_length=128, description="the claim's fencing token (or header X-Lease-Token)"
)
_REASON = Field("string", max_length=1024)
_SUBSCRIPTION_TTL = Field(
    "integer",
    1,
    MAX_SUBSCRIPTION_TTL_SECONDS,
    description="seconds (default 300); the daemon's subscriptionMaxTtlSeconds (86400 unless "
    "configured) is the ceiling",
)

# A concurrency key is part of store key names, so it holds no ':' (letters,
# digits and _ . @ - only).
_CONCURRENCY_KEY = r"[A-Za-z0-9_.@-]+"
FAIRNESS_MODES = ("round_robin",)

CREATE = Shape(
    {
        "command": replace(_COMMAND, required=True),
        "payload": Field(
            "any",
            required=True,
            description="the producer's JSON value (any but null), kept as a JSON string",
        ),
        "priority": Field("integer", *_INT32, description="0..9, higher first; others clamped"),
        "maxAttempts": Field("integer", 1, 1000, description="default 5"),
        "webhook": replace(_URL, description=f"result callback; {_URL.description}"),
        "idempotencyKey": Field("string", max_length=256),
        "runAt": replace(_TIME, description="when the task becomes ready (wins over delaySeconds)"),
        "delaySeconds": Field("number", 0, MAX_DELAY_SECONDS),
        "traceParent": Field(
            "string",
            max_length=MAX_TRACESTATE,
            pattern=_TRACEPARENT,
            description="W3C traceparent (default: the request's traceparent header)",
        ),
        "traceState": Field(
            "string", max_length=MAX_TRACESTATE, pattern=_TRACESTATE, description="W3C tracestate"
        ),
        "concurrencyKey": Field(
            "string",
            max_length=128,
            pattern=_CONCURRENCY_KEY,
            description="e.g. a customer id: the queue's maxInFlightPerKey limits the tasks of "
            "one key in progress at once, and its fairness round_robin rotates claims across keys",
        ),
    }
)
CLAIM = Shape(
    {
        "commands": Field(
            "array",
            max_length=100,
            min_items=1,
            items=_COMMAND,
            description="omitted: all the token allows (an empty list is refused)",
        ),
        "leaseSeconds": Field("integer", 1, MAX_LEASE_SECONDS, description="default 300"),
        "waitSeconds": Field(
            "number", description=f"long-poll, 0..{MAX_WAIT_SECONDS}; values outside are clamped"
        ),
    }
)
BATCH_CLAIM = Shape(
    {**CLAIM.fields, "count": Field("integer", 1, MAX_BATCH, description="default 1")}
)
HEARTBEAT = Shape(
    {
        "extendSeconds": Field("integer", 1, MAX_LEASE_SECONDS, description="default 300"),
        "leaseToken": _LEASE_TOKEN,
    }
)
NACK = Shape(
    {
        "delaySeconds": Field(
            "integer", 0, MAX_DELAY_SECONDS, description="default: the backoff policy's delay"
        ),
        "reason": _REASON,
        "leaseToken": _LEASE_TOKEN,
    }
)
ABANDON = Shape({"leaseToken": _LEASE_TOKEN})
ARTIFACT_REFERENCE = Shape(
    {
        "name": Field("string", max_length=256, required=True),
        "url": replace(_URL, required=True, description="where the artifact is"),
    }
)
INLINE_ARTIFACT = Shape(
    {
        "name": Field(
            "string",
            pattern=ARTIFACT_NAME_RE.pattern,
            required=True,
            description="letters, digits, . _ - (a letter or digit first)",
        ),
        "contentBase64": Field("string", pattern=_BASE64, format="byte", required=True),
        "contentType": Field(
            "string",
            pattern=_CONTENT_TYPE,
            nullable=False,
            description="a media type (default application/octet-stream)",
        ),
    }
)
RESULT = Shape(
    {
        "status": Field("string", enum=("COMPLETED", "FAILED"), required=True),
        "result": Field("object", description="required when status is COMPLETED"),
        "error": Field("string", max_length=MAX_TEXT, description="required when status is FAILED"),
        "artifacts": Field(
            "array",
            max_length=100,
            items=Field("object", ref="Artifact", nullable=False),
            description="{name, url}, or {name, contentBase64, contentType} for the daemon to "
            "keep (distinct names)",
        ),
        "leaseToken": _LEASE_TOKEN,
    },
    needs={("status", "COMPLETED"): "result", ("status", "FAILED"): "error"},
)
BATCH_RESULT_ITEM = Shape(
    {
        **RESULT.fields,
        "taskId": Field("string", pattern=_whole(OPAQUE_ID_RE), required=True),
    },
    needs=RESULT.needs,
)
BATCH_CREATE = Shape(
    {
        "tasks": Field(
            "array",
            min_items=1,
            max_length=MAX_BATCH,
            items=Field("object", ref="CreateTask", nullable=False),
            required=True,
            description="each item is created or refused on its own",
        )
    }
)
BATCH_RESULTS = Shape(
    {
        "results": Field(
            "array",
            min_items=1,
            max_length=MAX_BATCH,
            items=Field("object", ref="ResultItem", nullable=False),
            required=True,
            description="each item is recorded or refused on its own",
        )
    }
)
CANCEL = Shape({"reason": _REASON})
CLEANUP = Shape(
    {
        "limit": Field("integer", 1, MAX_CLEANUP_LIMIT, description="default 1000"),
        "before": replace(_TIME, description="retention expired before this time (default now)"),
    }
)
REDRIVE = Shape(
    {
        "ids": Field(
            "array",
            min_items=1,
            max_length=MAX_REDRIVE,
            items=_TASK_ID,
        ),
        "error": replace(_REASON, description="dead-lettered with this error"),
        "all": Field("boolean", nullable=False, description="true: every dead-lettered task"),
        "limit": Field("integer", 1, MAX_REDRIVE, description="default 100"),
        "ratePerSecond": Field("number", 0.1, 100_000),
        "dryRun": Field("boolean", nullable=False),
    },
    exactly_one=("ids", "error", "all"),
)
DLQ_QUERY = Shape(
    {
        "cursor": Field(
            "string",
            pattern="[A-Za-z0-9_-]+",
            format="cursor",
            description="the nextCursor of the page before",
        ),
        "limit": Field("integer", 1, MAX_DLQ_PAGE, description="default 100"),
        "error": replace(_REASON, description="dead-lettered with this error"),
        "olderThanSeconds": Field("integer", 0, MAX_AGE_SECONDS),
        "newerThanSeconds": Field("integer", 0, MAX_AGE_SECONDS),
    }
)
CALLBACKS_QUERY = Shape({"limit": Field("integer", 1, MAX_DLQ_PAGE, description="default 100")})
TASK_LIST_QUERY = Shape(
    {
        "status": Field(
            "string",
            enum=tuple(state.value for state in TaskState),
            required=True,
            description="which tasks to list",
        ),
        "cursor": DLQ_QUERY["cursor"],
        "limit": Field("integer", 1, MAX_DLQ_PAGE, description="default 100"),
    }
)
END_LEASE = Shape({"reason": replace(_REASON, description="kept in the task's history")})
RESULT_QUERY = Shape(
    {
        "waitSeconds": Field(
            "string",
            description=f"seconds to wait for the task to end, 0..{MAX_RESULT_WAIT_SECONDS} "
            "(larger: clamped); not a number or at most 0: no wait",
        )
    }
)
SUBSCRIBE = Shape(
    {
        "callbackUrl": replace(_URL, required=True),
        "eventTypes": Field(
            "array",
            max_length=MAX_EVENT_TYPES,
            items=_EVENT_TYPE,
            nullable=False,
            description="commands, or * (default: all the token allows)",
        ),
        "ttlSeconds": _SUBSCRIPTION_TTL,
        "deliveryMode": Field(
            "string", enum=tuple(m.value for m in DeliveryMode), description="default fanout"
        ),
        "groupId": Field(
            "string",
            max_length=128,
            description="required when deliveryMode is group, unless the token names a "
            "workerGroup (which it then defaults to, and must equal)",
        ),
        "minIntervalSeconds": Field("number", 0, 86_400, description="default 5"),
    },
)
SUBSCRIPTION_HEARTBEAT = Shape({"ttlSeconds": _SUBSCRIPTION_TTL})
QUEUE_SETTINGS = Shape(
    {
        "maxInFlightPerKey": Field(
            "integer",
            0,
            1_000_000,
            description="most tasks of one concurrencyKey in progress at once; 0 = no limit",
        ),
        "fairness": Field(
            "string",
            enum=("none", *FAIRNESS_MODES),
            description="round_robin: claims rotate across concurrencyKeys; none: oldest first",
        ),
    }
)

# The field names of each body, which the transports name unknown fields against.
CREATE_FIELDS = CREATE.names
CLAIM_FIELDS = CLAIM.names
HEARTBEAT_FIELDS = HEARTBEAT.names
NACK_FIELDS = NACK.names
ABANDON_FIELDS = ABANDON.names
RESULT_FIELDS = RESULT.names
CANCEL_FIELDS = CANCEL.names
CLEANUP_FIELDS = CLEANUP.names
REDRIVE_FIELDS = REDRIVE.names
DLQ_QUERY_FIELDS = DLQ_QUERY.names
TASK_LIST_QUERY_FIELDS = TASK_LIST_QUERY.names
END_LEASE_FIELDS = END_LEASE.names
QUEUE_SETTINGS_FIELDS = QUEUE_SETTINGS.names
SUBSCRIBE_FIELDS = SUBSCRIBE.names
SUBSCRIPTION_HEARTBEAT_FIELDS = SUBSCRIPTION_HEARTBEAT.names
CALLBACKS_QUERY_FIELDS = CALLBACKS_QUERY.names
BATCH_CREATE_FIELDS = BATCH_CREATE.names
BATCH_CLAIM_FIELDS = BATCH_CLAIM.names
BATCH_RESULTS_FIELDS = BATCH_RESULTS.names
BATCH_RESULT_ITEM_FIELDS = BATCH_RESULT_ITEM.names


def unknown_fields(body: Body, known: frozenset[str]) -> list[str]:
    """Fields codeq ignores (as codeQ does) but names back, so typos are noticed."""
    return sorted(k for k in body if k not in known)


# How deeply a request body may nest. orjson writes at most 254 levels, and what a
# client sends comes back inside answers a few levels deeper (a result inside a batch
# answer), so deeper bodies are refused where they come in, not where they go out.
MAX_JSON_DEPTH = 128
_ORJSON_MAX_DEPTH = 254


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body: none (zero bytes) means {}, anything but a JSON object (or one
    nested deeper than MAX_JSON_DEPTH) is rejected -- blanks alone are not JSON."""
    if not raw:
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


def _int(body: Body, shape: Shape, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise Invalid(f"{name} must be an integer", field=name)
    _in_range(shape[name], name, value)
    return int(value)


def _number(body: Body, shape: Shape, name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"{name} must be a number", field=name)
    _in_range(shape[name], name, value)
    return float(value)


def _in_range(spec: Field, name: str, value: float) -> None:
    lo = -math.inf if spec.minimum is None else spec.minimum
    hi = math.inf if spec.maximum is None else spec.maximum
    if not lo <= value <= hi:
        raise Invalid(f"{name} must be between {lo:g} and {hi:g}, got {value}", field=name)


def _text(body: Body, shape: Shape, name: str) -> str | None:
    spec = shape[name]
    value = body.get(name)
    if value is None or value == "":
        if spec.required:
            raise Invalid(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string", field=name)
    if spec.max_length is not None and len(value) > spec.max_length:
        raise Invalid(f"{name} must be at most {spec.max_length} characters", field=name)
    return value


def _trace(body: Body, name: str, problem: Callable[[str], str | None]) -> str | None:
    """A W3C Trace Context field: it goes on in callback headers, so it is checked
    here, not where it would break a delivery."""
    value = _text(body, CREATE, name)
    if value is not None and (why := problem(value)):
        raise Invalid(f"{name} {why}", field=name)
    return value


def _url(body: Body, shape: Shape, name: str) -> str | None:
    url = _text(body, shape, name)
    if url is not None:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 bracket
            raise Invalid(f"{name} is not a valid URL: {exc}", field=name) from None
        if not shape[name].matches(url) or parts.scheme not in ("http", "https"):
            raise Invalid(f"{name} must be an http or https URL", field=name)
        if not parts.hostname:
            raise Invalid(f"{name} must be an http or https URL", field=name)
    return url


# The instants an RFC 3339 timestamp can name and a response can show again: one
# before the epoch is as past as the epoch for every use here (a runAt, a cleanup's
# cutoff), one past 9999 in UTC is taken as its last millisecond.
_LAST_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC).timestamp() * 1000)


def _time_ms(body: Body, shape: Shape, name: str) -> int | None:
    value = _text(body, shape, name)
    if value is None:
        return None
    try:  # RFC 3339 lets T and Z be lower case; fromisoformat takes upper case only
        at = datetime.fromisoformat(value.upper())
    except ValueError as exc:
        raise Invalid(f"{name} must be an RFC 3339 timestamp, got {value!r}", field=name) from exc
    if at.tzinfo is None:
        raise Invalid(f"{name} must include a time zone offset (e.g. Z)", field=name)
    return min(max(int(at.timestamp() * 1000), 0), _LAST_MS)


def _matching(spec: Field, name: str, value: Any, problem: str) -> str:
    """A string value the field's pattern matches whole; else Invalid(problem)."""
    if not isinstance(value, str) or not spec.matches(value):
        raise Invalid(problem, field=name)
    return value


def _needs(shape: Shape, body: Body) -> None:
    """A value that makes another field required (a FAILED result's error, …)."""
    for (name, value), needed in shape.needs.items():
        if body.get(name) == value and body.get(needed) in (None, ""):
            raise Invalid(f"{needed} is required when {name} is {value}", field=needed)


# ------------------------------------------------------------ requests


def parse_create(body: Body) -> NewTask:
    command = _text(body, CREATE, "command")
    assert command is not None
    if not CREATE["command"].matches(command):
        raise Invalid("command may only contain letters, digits and _ . : -", field="command")
    payload = body.get("payload")
    if payload is None:  # codeQ binds it as required; any other JSON value is kept
        raise Invalid("payload is required (any JSON value but null, e.g. {})", field="payload")
    priority = _int(body, CREATE, "priority")
    return NewTask(
        command=command,
        payload=orjson.dumps(payload).decode(),
        priority=clamp_priority(priority or 0),
        max_attempts=_int(body, CREATE, "maxAttempts"),
        webhook=_url(body, CREATE, "webhook"),
        idempotency_key=_text(body, CREATE, "idempotencyKey"),
        run_at_ms=_time_ms(body, CREATE, "runAt"),
        delay_seconds=_number(body, CREATE, "delaySeconds"),
        trace_parent=_trace(body, "traceParent", trace_parent_problem),
        trace_state=_trace(body, "traceState", trace_state_problem),
        concurrency_key=_concurrency_key(body),
    )


def _concurrency_key(body: Body) -> str | None:
    value = _text(body, CREATE, "concurrencyKey")
    if value is not None and not CREATE["concurrencyKey"].matches(value):
        raise Invalid(
            "concurrencyKey may only contain letters, digits and _ . @ -", field="concurrencyKey"
        )
    return value


def parse_queue_settings(body: Body) -> tuple[int | None, str | None]:
    """A queue's new key settings: (maxInFlightPerKey, fairness), None = unchanged;
    fairness "none" is returned as ""."""
    limit = _int(body, QUEUE_SETTINGS, "maxInFlightPerKey")
    fairness = _text(body, QUEUE_SETTINGS, "fairness")
    if fairness is not None and fairness not in QUEUE_SETTINGS["fairness"].enum:
        raise Invalid("fairness must be none or round_robin", field="fairness")
    return limit, (None if fairness is None else "" if fairness == "none" else fairness)


def queue_settings_to_wire(command: str, limit: int, fairness: str) -> dict[str, Any]:
    return {"command": command, "maxInFlightPerKey": limit, "fairness": fairness or "none"}


def parse_claim(
    body: Body, warnings: list[str] | None = None, *, empty_means_all: bool = False
) -> ClaimRequest:
    """A claim; a waitSeconds outside 0..30 is clamped as codeQ does (≤ 0: no wait),
    and the clamp named in `warnings`. `commands` omitted (or null) claims every
    command the token allows; an explicit empty list is refused, as it reads like
    "nothing" and would claim everything (`empty_means_all`: a stream's ready frame,
    where [] has always meant every command)."""
    commands = body.get("commands")
    if commands == [] and CLAIM["commands"].min_items and not empty_means_all:
        raise Invalid(
            "commands must name at least one command"
            " (omit it to claim every command the token allows)",
            field="commands",
        )
    if commands is None:
        commands = []
    if not isinstance(commands, list) or not all(isinstance(c, str) and c for c in commands):
        raise Invalid("commands must be a list of command names", field="commands")
    most = CLAIM["commands"].max_length
    if most is not None and len(commands) > most:
        raise Invalid(f"commands may name at most {most} commands", field="commands")
    for command in commands:
        if not _COMMAND.matches(command):
            raise Invalid(f"commands: invalid command name {command!r}", field="commands")
    return ClaimRequest(
        commands=tuple(commands),
        lease_seconds=_int(body, CLAIM, "leaseSeconds"),
        wait_seconds=_clamped_wait(_number(body, CLAIM, "waitSeconds"), MAX_WAIT_SECONDS, warnings),
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
    return header or _text(body, ABANDON, "leaseToken")


def parse_extend_seconds(body: Body) -> int | None:
    return _int(body, HEARTBEAT, "extendSeconds")


def parse_nack(body: Body) -> tuple[int | None, str]:
    """The delay override (seconds) and the reason of a nack."""
    return _int(body, NACK, "delaySeconds"), _text(body, NACK, "reason") or ""


def parse_result(body: Body) -> ResultSubmission:
    raw_status = body.get("status")
    if raw_status not in RESULT["status"].enum:
        raise Invalid("status must be COMPLETED or FAILED", field="status")
    status = Status(raw_status)
    result = body.get("result")
    if result is not None and not isinstance(result, dict):
        raise Invalid("result must be a JSON object", field="result")
    error = _text(body, RESULT, "error")
    _needs(RESULT, body)
    return ResultSubmission(status, result, error, _artifacts(body.get("artifacts")))


def _artifacts(raw: Any) -> tuple[Artifact | InlineArtifact, ...]:
    """A result's artifacts: {name, url} references, or {name, contentBase64,
    contentType} content for the daemon to store (codeQ's uploader)."""
    if raw is None:
        return ()
    most = RESULT["artifacts"].max_length
    if not isinstance(raw, list) or (most is not None and len(raw) > most):
        raise Invalid(f"artifacts must be a list of at most {most} items", field="artifacts")
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
        name = _text(item, ARTIFACT_REFERENCE, "name")
        url = _url(item, ARTIFACT_REFERENCE, "url")
        if url is None:
            raise Invalid("each artifact needs a url (or contentBase64)", field="artifacts")
        assert name is not None
        out.append(Artifact(name=name, url=url))
    names = [a.name for a in out if isinstance(a, InlineArtifact)]
    if len(set(names)) < len(names):
        raise Invalid("inline artifacts need distinct names", field="artifacts")
    return tuple(out)


def _inline_artifact(item: dict[str, Any]) -> InlineArtifact:
    name = _matching(
        INLINE_ARTIFACT["name"],
        "artifacts",
        item.get("name"),
        "an inline artifact's name must be 1-128 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit",
    )
    encoded = _matching(
        INLINE_ARTIFACT["contentBase64"],
        "artifacts",
        item["contentBase64"],
        f"artifact {name!r}: contentBase64 is not base64",
    )
    content_type = _matching(
        INLINE_ARTIFACT["contentType"],
        "artifacts",
        item.get("contentType", "application/octet-stream"),
        f"artifact {name!r}: contentType must be a media type like 'image/png'",
    )
    return InlineArtifact(name=name, content=base64.b64decode(encoded), content_type=content_type)


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
        "concurrencyKey": task.extra.get("concurrencyKey") or None,
        "retryReason": task.extra.get("retryReason") or None,
        "lastError": task.extra.get("lastError") or None,
        "redriveCount": int(task.extra["redriveCount"]) if task.extra.get("redriveCount") else None,
        "cancelRequested": True if task.cancel_requested else None,
    }
    if with_lease_token:
        optional["leaseToken"] = task.lease_token
    wire.update((k, v) for k, v in optional.items() if v is not None)
    return wire


def created_item(new: NewTask, task: Task, created: bool) -> dict[str, Any]:
    """A batch item's answer: the task, marked when it was an idempotent replay, with
    a warning when the replayed create asked for something else."""
    item: dict[str, Any] = {"task": task_to_wire(task)}
    if not created:
        item["idempotentReplay"] = True
        if differ := replay_differences(new, task):
            item["warning"] = replay_warning(differ)
    return item


def replay_warning(differ: list[str]) -> str:
    return (
        f"idempotencyKey already names a task with another {', '.join(differ)};"
        " that task is returned, unchanged"
    )


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
    return _text(body, CANCEL, "reason") or ""


def parse_cleanup(body: Body) -> tuple[int, int | None]:
    """The limit (default 1000) and the cutoff (epoch ms; None = the retention
    default) of an admin cleanup."""
    limit = _int(body, CLEANUP, "limit")
    return (1000 if limit is None else limit), _time_ms(body, CLEANUP, "before")


def _bool(body: Body, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise Invalid(f"{name} must be true or false", field=name)
    return value


def parse_redrive(body: Body) -> RedriveRequest:
    """Exactly one of `ids`, `error` or `all: true` says which tasks move."""
    ids = body.get("ids")
    if ids is not None:
        spec = REDRIVE["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise Invalid("ids must be a list of task ids", field="ids")
        if not spec.min_items <= len(ids) <= (spec.max_length or MAX_REDRIVE):
            raise Invalid(f"ids must name 1 to {spec.max_length} tasks", field="ids")
        for task_id in ids:
            _matching(_TASK_ID, "ids", task_id, f"ids: invalid task id {task_id!r}")
    error, every = _text(body, REDRIVE, "error"), _bool(body, "all")
    given = {"ids": ids, "error": error, "all": every}
    chosen = [name for name in REDRIVE.exactly_one if given[name]]
    if len(chosen) != 1:
        raise Invalid(
            "give exactly one of ids, error or all: true"
            + (f" (got {', '.join(chosen)})" if chosen else ""),
            field=chosen[-1] if chosen else "ids",
        )
    limit = _int(body, REDRIVE, "limit")
    return RedriveRequest(
        ids=tuple(ids or ()),
        error=error,
        all=every,
        limit=100 if limit is None else limit,
        rate_per_second=_number(body, REDRIVE, "ratePerSecond"),
        dry_run=_bool(body, "dryRun"),
    )


def _query_int(query: Mapping[str, str], shape: Shape, name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer, got {raw!r}", field=name) from None
    _in_range(shape[name], name, value)
    return value


def parse_dlq_query(query: Mapping[str, str]) -> DlqQuery:
    """The query string of a DLQ listing: cursor, limit (100, at most 1000), error,
    olderThanSeconds, newerThanSeconds."""
    limit = _query_int(query, DLQ_QUERY, "limit")
    cursor = query.get("cursor")
    return DlqQuery(
        limit=100 if limit is None else limit,
        cursor=decode_cursor(cursor) if cursor else None,
        error=_text(query, DLQ_QUERY, "error"),
        older_than_seconds=_query_int(query, DLQ_QUERY, "olderThanSeconds"),
        newer_than_seconds=_query_int(query, DLQ_QUERY, "newerThanSeconds"),
    )


def encode_cursor(position: DlqPosition | None) -> str | None:
    """An opaque, URL-safe cursor for a DLQ position."""
    if position is None:
        return None
    raw = f"{position.score}:{position.task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> DlqPosition:
    try:
        if not DLQ_QUERY["cursor"].matches(cursor):
            raise ValueError(cursor)
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, task_id = raw.partition(":")
        position = DlqPosition(int(score), task_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Invalid("cursor is not one this server returned", field="cursor") from None
    if position.score < 0 or not _TASK_ID.matches(position.task_id):
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


def parse_task_list_query(query: Mapping[str, str]) -> TaskListQuery:
    """The query string of a task listing: status (required), cursor, limit (100, at
    most 1000)."""
    status = _text(query, TASK_LIST_QUERY, "status")
    if status not in TASK_LIST_QUERY["status"].enum:
        raise Invalid(
            f"status must be one of {', '.join(TASK_LIST_QUERY['status'].enum)}, got {status!r}",
            field="status",
        )
    limit = _query_int(query, TASK_LIST_QUERY, "limit")
    cursor = query.get("cursor")
    return TaskListQuery(
        state=TaskState(status),
        limit=100 if limit is None else limit,
        cursor=decode_cursor(cursor) if cursor else None,
    )


def task_page_to_wire(command: str, state: TaskState, page: TaskPage) -> dict[str, Any]:
    return {
        "command": command,
        "status": state.value,
        "tasks": [task_to_wire(task) for task in page.tasks],
        "nextCursor": encode_cursor(page.next_cursor),
    }


def parse_end_lease(body: Body) -> str:
    """The optional reason of an admin requeue or fail."""
    return _text(body, END_LEASE, "reason") or ""


def redrive_to_wire(outcome: RedriveOutcome) -> dict[str, Any]:
    return {
        "redriven": len(outcome.ids),
        "ids": outcome.ids,
        "skipped": outcome.skipped,
        "dryRun": outcome.dry_run,
    }


# ------------------------------------------------------------ subscriptions


def parse_subscribe(body: Body) -> NewSubscription:
    url = _url(body, SUBSCRIBE, "callbackUrl")
    assert url is not None
    types = body.get("eventTypes", [])
    if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
        raise Invalid("eventTypes must be a list of command names", field="eventTypes")
    if len(types) > MAX_EVENT_TYPES:
        raise Invalid(f"eventTypes may list at most {MAX_EVENT_TYPES} commands", field="eventTypes")
    for command in types:
        problem = f"eventTypes entry {command!r} is not a valid command"
        _matching(_EVENT_TYPE, "eventTypes", command, problem)
    mode = _text(body, SUBSCRIBE, "deliveryMode") or DeliveryMode.FANOUT.value
    if mode not in SUBSCRIBE["deliveryMode"].enum:
        raise Invalid(
            f"deliveryMode must be one of fanout, group, hash, got {mode!r}", field="deliveryMode"
        )
    return NewSubscription(
        callback_url=url,
        event_types=tuple(types),
        ttl_seconds=_int(body, SUBSCRIBE, "ttlSeconds"),
        delivery_mode=DeliveryMode(mode),
        group_id=_text(body, SUBSCRIBE, "groupId"),
        min_interval_seconds=_number(body, SUBSCRIBE, "minIntervalSeconds"),
    )


def parse_subscription_ttl(body: Body) -> int | None:
    return _int(body, SUBSCRIPTION_HEARTBEAT, "ttlSeconds")


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
    return _query_int(query, CALLBACKS_QUERY, "limit") or 100


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


def _batch_items(body: Body, shape: Shape, name: str) -> list[Any]:
    spec = shape[name]
    items = body.get(name)
    if not isinstance(items, list):
        raise Invalid(f"{name} must be a list", field=name)
    if not spec.min_items <= len(items) <= (spec.max_length or MAX_BATCH):
        raise Invalid(
            f"{name} must hold {spec.min_items} to {spec.max_length} items, got {len(items)}",
            field=name,
        )
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
    items = _batch_items(body, BATCH_CREATE, "tasks")
    return [_item(parse_create, raw, i) for i, raw in enumerate(items)]


def parse_batch_claim(body: Body) -> tuple[ClaimRequest, int]:
    count = _int(body, BATCH_CLAIM, "count")
    return parse_claim(body), 1 if count is None else count


def _result_item(raw: Body) -> tuple[str, str | None, ResultSubmission]:
    task_id = _text(raw, BATCH_RESULT_ITEM, "taskId")
    problem = "invalid task id: at most 64 letters, digits, '.', '_', '~' or '-'"
    task_id = _matching(BATCH_RESULT_ITEM["taskId"], "taskId", task_id, problem)
    return task_id, parse_lease_token(raw, None), parse_result(raw)


def parse_batch_results(body: Body) -> list[tuple[str, str | None, ResultSubmission] | Invalid]:
    """The items of POST /tasks/batch/results; a bad item is its own Invalid."""
    items = _batch_items(body, BATCH_RESULTS, "results")
    return [_item(_result_item, raw, i) for i, raw in enumerate(items)]


def error_item(exc: CodeqError, status: int) -> dict[str, Any]:
    """A batch item's failure: codeQ's {"error"} plus its HTTP-like status code."""
    return {"error": exc.message, "code": status, **exc.extra}


# ------------------------------------------------------------ recurring schedules

MAX_INTERVAL_SECONDS = 366 * 86_400


def _any_case(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" for c in word)


def _cron_field(number: str, names: tuple[str, ...] = ()) -> str:
    """One cron field: *, a value or a range, each with an optional /step, listed by
    commas; values are numbers in range or (months, weekdays) English names."""
    value = f"(?:{number}{''.join('|' + _any_case(n) for n in names)})"
    item = rf"(?:\*|{value}(?:-{value})?)(?:/[1-9][0-9]{{0,2}})?"
    return f"{item}(?:,{item}){{0,19}}"


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
CRON_PATTERN = "(?:@(?:hourly|daily|weekly|monthly|yearly|annually|midnight)|{})".format(
    " +".join(
        (
            _cron_field("[0-5]?[0-9]"),
            _cron_field("[01]?[0-9]|2[0-3]"),
            _cron_field("0?[1-9]|[12][0-9]|3[01]"),
            _cron_field("0?[1-9]|1[0-2]", _MONTHS),
            _cron_field("0?[0-7]", _WEEKDAYS),
        )
    )
)


@lru_cache(maxsize=1)
def time_zones() -> tuple[str, ...]:
    """The IANA zone names this host's zoneinfo knows (the document lists them)."""
    return tuple(sorted(available_timezones()))


SCHEDULE = Shape(
    {
        "command": replace(_COMMAND, required=True),
        "payload": replace(CREATE["payload"], description="the tasks' payload (any but null)"),
        "priority": CREATE["priority"],
        "maxAttempts": CREATE["maxAttempts"],
        "webhook": CREATE["webhook"],
        "cron": Field(
            "string",
            max_length=256,
            pattern=CRON_PATTERN,
            description="5 fields (minute hour day-of-month month day-of-week: numbers, "
            "names, * , - /) or @hourly, @daily, @weekly, @monthly, @yearly; one that "
            "never fires (Feb 30) makes a schedule with no fire times",
        ),
        "intervalSeconds": Field("integer", 1, MAX_INTERVAL_SECONDS),
        "timezone": Field(
            "string",
            max_length=64,
            enum=time_zones(),
            description="IANA name for cron times (default UTC)",
        ),
        "startAt": replace(_TIME, description="no fire before (RFC 3339)"),
        "endAt": replace(_TIME, description="no fire after (RFC 3339)"),
        "misfire": Field(
            "string", enum=("skip", "run_once"), description="after downtime; default skip"
        ),
        "misfireGraceSeconds": Field(
            "integer", 0, 86_400, description="later than this is a misfire (default 60)"
        ),
    },
    exactly_one=("cron", "intervalSeconds"),
)
SCHEDULE_FIELDS = SCHEDULE.names


def parse_schedule(name: str, body: Body) -> ScheduleSpec:
    """A schedule PUT; the schedule checks its cron, zone and times itself."""
    command = _text(body, SCHEDULE, "command")
    assert command is not None
    if not SCHEDULE["command"].matches(command):
        raise Invalid("command may only contain letters, digits and _ . : -", field="command")
    cron = _text(body, SCHEDULE, "cron")
    if cron is not None and not SCHEDULE["cron"].matches(cron):
        raise Invalid(
            "cron must have 5 fields (minute hour day-of-month month day-of-week) of "
            f"numbers, names, * , - / or be an alias like @daily, got {cron!r}",
            field="cron",
        )
    zone = _text(body, SCHEDULE, "timezone") or "UTC"
    if zone not in time_zones():
        raise Invalid(
            f"timezone must be an IANA time zone name (e.g. Europe/Berlin), got {zone!r}",
            field="timezone",
        )
    interval = _int(body, SCHEDULE, "intervalSeconds")
    if (cron is None) == (interval is None):
        given = "both were given" if cron is not None else "neither was given"
        raise Invalid(f"give exactly one of cron or intervalSeconds ({given})", field="cron")
    misfire = _text(body, SCHEDULE, "misfire") or "skip"
    if misfire not in SCHEDULE["misfire"].enum:
        raise Invalid(f"misfire must be skip or run_once, got {misfire!r}", field="misfire")
    payload = body.get("payload")
    if payload is None:
        raise Invalid("payload is required (any JSON value but null, e.g. {})", field="payload")
    grace = _int(body, SCHEDULE, "misfireGraceSeconds")
    return ScheduleSpec(
        name=name,
        command=command,
        payload=orjson.dumps(payload).decode(),
        priority=clamp_priority(_int(body, SCHEDULE, "priority") or 0),
        max_attempts=_int(body, SCHEDULE, "maxAttempts"),
        webhook=_url(body, SCHEDULE, "webhook"),
        cron=cron,
        interval_seconds=interval,
        timezone=zone,
        start_at_ms=_time_ms(body, SCHEDULE, "startAt"),
        end_at_ms=_time_ms(body, SCHEDULE, "endAt"),
        misfire=misfire,
        misfire_grace_seconds=DEFAULT_MISFIRE_GRACE_SECONDS if grace is None else grace,
    )


def schedule_to_wire(schedule: Schedule) -> dict[str, Any]:
    spec = schedule.spec
    body: dict[str, Any] = {
        "name": spec.name,
        "command": spec.command,
        "payload": orjson.loads(spec.payload),
        "priority": spec.priority,
        "timezone": spec.timezone,
        "misfire": spec.misfire,
        "misfireGraceSeconds": spec.misfire_grace_seconds,
        "paused": schedule.paused,
        "state": "paused"
        if schedule.paused
        else "ended"
        if schedule.next_at_ms is None
        else "active",
        "nextFireTimes": [rfc3339(at) for at in schedule.upcoming()],
        "fires": schedule.fires,
        "misfires": schedule.misfires,
        "version": schedule.version,
        "createdAt": rfc3339(schedule.created_at_ms),
        "updatedAt": rfc3339(schedule.updated_at_ms),
    }
    optional = {
        "cron": spec.cron,
        "intervalSeconds": spec.interval_seconds,
        "maxAttempts": spec.max_attempts,
        "webhook": spec.webhook,
        "startAt": rfc3339(spec.start_at_ms),
        "endAt": rfc3339(spec.end_at_ms),
        "lastFireAt": rfc3339(schedule.last_fire_at_ms),
        "lastTaskId": schedule.last_task_id,
    }
    return body | {key: value for key, value in optional.items() if value is not None}
