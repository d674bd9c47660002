"""The domain of codeq: tasks, results, queue stats and errors. Pure data, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson

MAX_PRIORITY = 9
MAX_WAIT_SECONDS = 30
MAX_LEASE_SECONDS = 86_400
MAX_DELAY_SECONDS = 365 * 86_400

# Commands appear inside store key names, so they keep to a safe alphabet.
COMMAND_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# Task IDs are "<tenant tag>-<random>": opaque, URL-safe, at most 64 characters.
TASK_ID_RE = re.compile(r"^[0-9a-f]{12}-[A-Za-z0-9_-]{10,40}$")
# What any task id may look like (SPEC §2: opaque, URL-safe, at most 64 characters):
# an id of this shape that codeq did not mint is unknown (404, as codeQ); only an id
# that can never be valid is a 400.
OPAQUE_ID_RE = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
MAX_RESULT_WAIT_SECONDS = 60

# W3C Trace Context (https://www.w3.org/TR/trace-context/): what a task may carry
# as traceParent/traceState, and so what codeq sends on in callback headers.
# traceparent: version-traceid-parentid-flags, lowercase hex; version ff, an all-zero
# trace or parent id are invalid; a version after 00 may append fields.
TRACEPARENT_RE = re.compile(
    r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
    r"(?:-[\x21-\x7e]*)?$"
)
# tracestate: up to 32 comma-separated key=value members; a key is a simple key or
# tenant@system, a value printable ASCII without ',' and '=' not ending in a space.
TRACESTATE_MEMBER_RE = re.compile(
    r"^(?:[a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$"
)
MAX_TRACESTATE = 512
MAXTRACESTATE_MEMBER_RES = 32


def trace_parent_problem(value: str) -> str | None:
    """Why a traceparent is not W3C Trace Context, or None when it is."""
    if not TRACEPARENT_RE.fullmatch(value) or (value.startswith("00") and len(value) != 55):
        return "must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lowercase)"
    return None


def trace_state_problem(value: str) -> str | None:
    """Why a tracestate is not W3C Trace Context, or None when it is."""
    if len(value) > MAX_TRACESTATE:
        return f"must be at most {MAX_TRACESTATE} characters"
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > MAXTRACESTATE_MEMBER_RES:
        return f"must have at most {MAXTRACESTATE_MEMBER_RES} members"
    if not all(TRACESTATE_MEMBER_RE.fullmatch(m) for m in members):
        return "must be a W3C tracestate (comma-separated key=value, printable ASCII)"
    return None


class Status(StrEnum):
    """Where a task is in its lifecycle (codeQ's names, plus CANCELLED)."""

    PENDING = "PENDING"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})


class BackoffPolicy(StrEnum):
    """How long a nacked or expired task waits before it is ready again."""

    FIXED = "fixed"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"
    EXP_FULL_JITTER = "exp_full_jitter"
    EXP_EQUAL_JITTER = "exp_equal_jitter"


# ---------------------------------------------------------------- errors


class CodeqError(Exception):
    """Base of the domain errors; each transport maps them to its wire form."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class Invalid(CodeqError):
    """The request is malformed or a value is out of range."""


class Unauthenticated(CodeqError):
    """No credentials, or credentials that do not verify."""


class Forbidden(CodeqError):
    """Authenticated, but not allowed to do this."""


class NotFound(CodeqError):
    """No such task (or it belongs to another tenant)."""


class Conflict(CodeqError):
    """The task is not in a state that allows this operation."""


class TooLarge(CodeqError):
    """The request body is larger than the configured limit."""


class Unavailable(CodeqError):
    """The store cannot be reached; the client may retry."""


class TooManyRequests(CodeqError):
    """The caller's rate limit for this operation is spent; it may retry after
    `retry_after` whole seconds."""

    def __init__(self, message: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(message, **extra, retryAfterSeconds=retry_after)
        self.retry_after = retry_after


# ---------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the verified claims of a bearer token, reduced to what codeq uses."""

    subject: str
    tenant: str
    scopes: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    admin: bool = False
    worker: bool = False
    worker_group: str | None = None

    def may_handle(self, command: str) -> bool:
        """Whether this worker's eventTypes allow the command."""
        return "*" in self.event_types or command in self.event_types


# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class NewTask:
    """A producer's request to create a task, already validated."""

    command: str
    payload: str  # the producer's JSON, kept as text like codeQ
    priority: int = 0
    max_attempts: int | None = None
    webhook: str | None = None
    idempotency_key: str | None = None
    run_at_ms: int | None = None
    delay_seconds: float | None = None
    trace_parent: str | None = None
    trace_state: str | None = None
    concurrency_key: str | None = None  # the queue's maxInFlightPerKey counts per key


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A worker's request for the next task."""

    commands: tuple[str, ...] = ()
    lease_seconds: int | None = None
    wait_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Artifact:
    """A named output of a task, by URL."""

    name: str
    url: str


@dataclass(frozen=True, slots=True)
class InlineArtifact:
    """An output sent with a result itself (codeQ's `contentBase64`), to be stored by
    the daemon and served back by URL."""

    name: str
    content: bytes = field(repr=False)
    content_type: str = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class ResultSubmission:
    """A worker's terminal report for a task."""

    status: Status
    result: dict[str, Any] | None = None
    error: str | None = None
    artifacts: tuple[Artifact | InlineArtifact, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaseProof:
    """How a worker proves it holds a task's lease: its identity and, optionally, the
    fencing token returned by its claim."""

    worker_id: str
    lease_token: str | None = None


# ---------------------------------------------------------------- records


@dataclass(slots=True)
class Task:
    """A task as the store holds it and the wire shows it."""

    id: str
    command: str
    payload: str
    priority: int
    status: Status
    attempts: int
    max_attempts: int
    tenant_id: str
    created_at_ms: int
    updated_at_ms: int
    webhook: str | None = None
    worker_id: str | None = None
    lease_until_ms: int | None = None
    lease_token: str | None = None
    error: str | None = None
    run_at_ms: int | None = None
    idempotency_key: str | None = None
    trace_parent: str | None = None
    trace_state: str | None = None
    cancel_requested: bool = False
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Result:
    """The terminal outcome a worker reported for a task."""

    task_id: str
    status: Status
    result: dict[str, Any] | None
    error: str | None
    artifacts: tuple[Artifact, ...]
    completed_at_ms: int


@dataclass(frozen=True, slots=True)
class NackOutcome:
    """What a nack did: requeued after a delay, dead-lettered, or -- when the task's
    cancel was requested -- ended it as CANCELLED."""

    dead_lettered: bool
    delay_seconds: int
    command: str = ""
    cancelled: bool = False
    created_at_ms: int = 0  # set when dead-lettered (for the processing-latency metric)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The backoff applied to nacked and expired tasks, in milliseconds."""

    policy: BackoffPolicy = BackoffPolicy.EXP_FULL_JITTER
    base_ms: int = 5_000
    max_ms: int = 900_000


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One transition in a task's timeline."""

    at_ms: int
    event: str
    detail: dict[str, Any]


# ---------------------------------------------------------------- admin


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The counts of one queue (tenant, command), codeQ's QueueStats plus `paused`."""

    command: str
    ready: int
    delayed: int
    in_progress: int
    dlq: int
    paused: bool
    oldest_ready_ms: int | None = None  # when the longest-waiting ready task became ready


@dataclass(frozen=True, slots=True)
class DlqPosition:
    """A place in a DLQ, which is ordered by dead-letter time (ms), then task ID."""

    score: int
    task_id: str


@dataclass(frozen=True, slots=True)
class DlqQuery:
    """Which dead-lettered tasks to list: after `cursor`, whose error text contains
    `error` (case-insensitive), dead-lettered at least `older_than_seconds` ago and at
    most `newer_than_seconds` ago."""

    limit: int = 100
    cursor: DlqPosition | None = None
    error: str | None = None
    older_than_seconds: int | None = None
    newer_than_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered task and when it was dead-lettered."""

    task: Task
    dead_lettered_at_ms: int


@dataclass(frozen=True, slots=True)
class DlqPage:
    """One page of a DLQ listing; `next_cursor` is None at the end."""

    items: list[DeadLetter]
    next_cursor: DlqPosition | None


class TaskState(StrEnum):
    """Where a task stands, as a task listing selects it: finer than Status (a PENDING
    task is ready or delayed; a dead-lettered task is one of the FAILED)."""

    READY = "ready"
    DELAYED = "delayed"
    IN_PROGRESS = "in_progress"
    DLQ = "dlq"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class TaskListQuery:
    """Which tasks of a command to list: those in `state`, after `cursor` (a place in
    the state's index, ordered as DlqPosition: score, then task ID)."""

    state: TaskState
    limit: int = 100
    cursor: DlqPosition | None = None


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of a task listing; `next_cursor` is None at the end."""

    tasks: list[Task]
    next_cursor: DlqPosition | None


@dataclass(frozen=True, slots=True)
class RedriveRequest:
    """Which dead-lettered tasks to move back to ready: the named `ids`, or up to
    `limit` whose error contains `error`, or up to `limit` of all; at most
    `rate_per_second` per second; `dry_run` reports without moving."""

    ids: tuple[str, ...] = ()
    error: str | None = None
    all: bool = False
    limit: int = 100
    rate_per_second: float | None = None
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class RedriveOutcome:
    """What a redrive moved (or, in a dry run, would move) and which ids it skipped
    because they were not in the DLQ."""

    ids: list[str]
    skipped: list[str]
    dry_run: bool


# ---------------------------------------------------------------- webhooks


class DeliveryMode(StrEnum):
    """How a "work available" event picks the subscriptions it notifies."""

    FANOUT = "fanout"  # every matching subscription
    GROUP = "group"  # one per groupId, round-robin
    HASH = "hash"  # one per groupId, deterministic per time bucket


@dataclass(frozen=True, slots=True)
class NewSubscription:
    """A worker's request to be told when work is available, already validated
    (except against the caller's token, which the service checks)."""

    callback_url: str
    event_types: tuple[str, ...] = ()  # () = the token's eventTypes
    ttl_seconds: int | None = None
    delivery_mode: DeliveryMode = DeliveryMode.FANOUT
    group_id: str | None = None
    min_interval_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Subscription:
    """A stored worker subscription."""

    id: str
    callback_url: str
    event_types: tuple[str, ...]
    delivery_mode: DeliveryMode
    group_id: str | None
    min_interval_seconds: float
    expires_at_ms: int
    created_at_ms: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class ExpiredLease:
    """A lease the reaper found expired, and what became of its task."""

    command: str
    task_id: str
    worker_id: str
    attempt: int
    outcome: str  # requeued | delayed | dead_lettered | cancelled


@dataclass(frozen=True, slots=True)
class Callback:
    """A result callback in the outbox: the webhook of a task that ended, with the
    result record it carries and the attempts made so far."""

    id: str
    task_id: str
    url: str
    command: str
    record: dict[str, Any]
    attempts: int
    created_at_ms: int
    trace_parent: str | None = None
    claim: str = ""
    last_error: str | None = None
    abandoned_at_ms: int | None = None
    # Why the stored record cannot be delivered (damaged fields); None when it can.
    damaged: str | None = None


def replay_differences(new: NewTask, task: Task) -> list[str]:
    """The fields in which a create that replayed an idempotency key asked for
    something else than the task it got back (payloads compared as JSON values)."""
    differ = []
    if new.command != task.command:
        differ.append("command")
    if new.payload != task.payload and orjson.loads(new.payload) != orjson.loads(task.payload):
        differ.append("payload")
    if clamp_priority(new.priority) != task.priority:
        differ.append("priority")
    if new.max_attempts is not None and new.max_attempts != task.max_attempts:
        differ.append("maxAttempts")
    if (new.webhook or None) != (task.webhook or None):
        differ.append("webhook")
    return differ


def clamp_priority(priority: int) -> int:
    """Priorities outside 0..9 are clamped, as codeQ does."""
    return max(0, min(MAX_PRIORITY, priority))


def rfc3339(ms: int | None) -> str | None:
    """Epoch milliseconds as an RFC 3339 UTC timestamp (codeQ's wire format)."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)
    return f"{_rfc3339_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=4096)
def _rfc3339_second(seconds: int) -> str:
    # Timestamps on one response (and across a busy second) share their second: the
    # formatting is done once per second, not per field.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
