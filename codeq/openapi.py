"""The OpenAPI 3 document of the HTTP API (GET /openapi.json).

Request bodies and query strings are rendered from the very declarations codeq.wire
validates with (wire.Shape, wire.Field): a bound, pattern or required field changed
there changes here, so the document cannot promise what the server refuses or the
other way round. Responses are declared below, field by field, as the encoders in
codeq.wire produce them (the API fuzz suite checks every answer against them). A test
checks that every route the HTTP transport serves is in the table and nothing else is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from codeq import wire
from codeq.artifacts import NAME_RE as ARTIFACT_NAME_RE
from codeq.domain import COMMAND_RE, OPAQUE_ID_RE, TASK_ID_RE, TaskState

PREFIX = "/v1/codeq"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# ------------------------------------------------------------ requests, from codeq.wire


def field_schema(spec: wire.Field, *, in_query: bool = False) -> dict[str, Any]:
    """A wire field as OpenAPI 3.0 JSON Schema: exactly the values its reader takes.
    A nullable field takes null, and a nullable string "", for absent (a query
    parameter says so with allowEmptyValue)."""
    if spec.ref is not None:
        return _ref(spec.ref)
    absent_ok = spec.nullable and not spec.required and not in_query
    schema: dict[str, Any]
    if spec.type == "any":
        schema = {
            "anyOf": [{"type": t} for t in ("object", "array", "string", "number", "boolean")]
        }
    elif spec.type == "string" and absent_ok and spec.format is not None:
        # a URL or a time, or "" for none: a format cannot say "or empty" itself
        value = {"type": "string", **_string(spec, blank_ok=False), "nullable": True}
        schema = {"anyOf": [value, {"type": "string", "enum": [""]}]}
    else:
        schema = {"type": spec.type}
        if spec.type == "string":
            schema |= _string(spec, blank_ok=absent_ok)
        elif spec.type in ("integer", "number"):
            bounds = (("minimum", spec.minimum), ("maximum", spec.maximum))
            schema |= {key: value for key, value in bounds if value is not None}
        elif spec.type == "array":
            schema["items"] = field_schema(spec.items) if spec.items is not None else {}
            if spec.min_items:
                schema["minItems"] = spec.min_items
            if spec.max_length is not None:
                schema["maxItems"] = spec.max_length
        if absent_ok:
            schema["nullable"] = True
            if "enum" in schema:
                schema["enum"].append(None)  # an enum that omits null forbids it
    if spec.description:
        schema["description"] = spec.description
    return schema


def _string(spec: wire.Field, *, blank_ok: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if spec.pattern is not None:
        schema["pattern"] = f"^(?:{spec.pattern})?$" if blank_ok else f"^(?:{spec.pattern})$"
    elif spec.required and not spec.enum:
        schema["minLength"] = 1
    if spec.max_length is not None:
        schema["maxLength"] = spec.max_length
    if spec.enum:
        schema["enum"] = [*spec.enum, *([""] if blank_ok else [])]
    if spec.format is not None:
        schema["format"] = spec.format
    return schema


def _given(spec: wire.Field) -> dict[str, Any]:
    """What a field holds when it counts as given: not null, not "", not false."""
    if spec.type == "boolean":
        return {"type": "boolean", "enum": [True]}
    if spec.type == "string":
        return {"type": "string", "minLength": 1}
    return {"type": spec.type}


def shape_schema(shape: wire.Shape) -> dict[str, Any]:
    """A body the wire takes: its fields (unknown ones are ignored, and named back in
    X-CodeQ-Warning), the required ones, and the rules across fields."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: field_schema(spec) for name, spec in sorted(shape.fields.items())},
    }
    required = [name for name, spec in shape.fields.items() if spec.required]
    if required:
        schema["required"] = required
    if shape.needs:
        schema["oneOf"] = _needs(shape)
    if shape.exactly_one:
        schema["oneOf"] = [
            {"required": [name], "properties": {name: _given(shape[name])}}
            for name in shape.exactly_one
        ]
    return schema


def _needs(shape: wire.Shape) -> list[dict[str, Any]]:
    """One branch per value of the field whose values make others required (a result's
    status); every value of that field's enum must be covered."""
    (deciding,) = {name for name, _ in shape.needs}
    values = shape[deciding].enum
    assert set(values) == {value for _, value in shape.needs}, f"{deciding}: a value needs nothing"
    return [
        {
            "required": [needed := shape.needs[(deciding, value)]],
            "properties": {deciding: {"enum": [value]}, needed: _given(shape[needed])},
        }
        for value in values
    ]


def _query(shape: wire.Shape) -> list[dict[str, Any]]:
    return [
        # "" reads as absent, as the wire's readers take it (a required one: refused)
        {"name": name, "in": "query",
         **({"required": True} if spec.required else {"allowEmptyValue": True}),
         "schema": field_schema(spec, in_query=True)}
        for name, spec in sorted(shape.fields.items())
    ]  # fmt: skip


def _segment(regex_pattern: str, description: str) -> dict[str, Any]:
    """A path parameter: what the route takes, and never . or .. (clients remove those)."""
    whole = regex_pattern.removeprefix("^").removesuffix("$")
    return {"type": "string", "pattern": rf"^(?!\.\.?$)(?:{whole})$", "description": description}


PATH_PARAMETERS: Mapping[str, dict[str, Any]] = {
    "id": _segment(OPAQUE_ID_RE.pattern, "a task id (an id codeq did not mint is not found)"),
    "subscription": _segment(TASK_ID_RE.pattern, "a subscription id"),
    "command": _segment(COMMAND_RE.pattern, "a command name"),
    "name": _segment(ARTIFACT_NAME_RE.pattern, "an inline artifact's name"),
    "schedule": _segment(COMMAND_RE.pattern, "a schedule's name"),
}


# ------------------------------------------------------------ operations


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint: method, path (aiohttp's {param} form), who may call it, what it
    takes and answers, and which operations its answer links to."""

    method: str
    path: str
    summary: str
    auth: str  # producer | worker | any | admin | none
    body: wire.Shape | None = None
    query: wire.Shape | None = None
    answers: Mapping[int, str] = field(default_factory=dict)  # status -> schema or text
    links: Mapping[str, str] = field(default_factory=dict)  # operationId -> id expression


_TASK_ID = f"{PREFIX}/tasks/{{id}}"
_QUEUE = f"{PREFIX}/admin/queues/{{command}}"
_SUBS = f"{PREFIX}/workers/subscriptions"
_SCHEDULE = f"{PREFIX}/admin/schedules/{{schedule}}"

_ID = "$response.body#/id"
_FIRST_TASK_ID = "$response.body#/tasks/0/id"
_SUBSCRIPTION_ID = "$response.body#/subscriptionId"
# (not to the result: that of a task not ended is a 404, as codeQ answers)
_PRODUCED = {
    "getTasksId": _ID,
    "getTasksIdHistory": _ID,
    "postTasksIdCancel": _ID,
}
_LEASED = {
    "postTasksIdHeartbeat": _ID,
    "postTasksIdNack": _ID,
    "postTasksIdAbandon": _ID,
    "postTasksIdResult": _ID,
    "getTasksId": _ID,
    "postTasksIdCancel": _ID,
}

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/healthz", "The process is alive", "none", answers={200: "Health"}),
    Operation("GET", "/readyz", "Store reachable, actors running", "none",
              answers={200: "Readiness", 503: "Readiness"}),
    Operation("GET", "/metrics", "Prometheus metrics (text format)", "none",
              answers={200: "text"}),
    Operation("GET", "/openapi.json", "This document", "none", answers={200: "object"}),
    Operation("POST", f"{PREFIX}/tasks", "Create a task", "producer", wire.CREATE,
              answers={202: "Task"}, links=_PRODUCED),
    Operation("POST", f"{PREFIX}/tasks/batch", "Create up to 1000 tasks", "producer",
              wire.BATCH_CREATE, answers={200: "BatchCreated"}),
    Operation("POST", f"{PREFIX}/tasks/claim", "Lease the next task (long-poll)", "worker",
              wire.CLAIM, answers={200: "LeasedTask", 204: "no task came"}, links=_LEASED),
    Operation("POST", f"{PREFIX}/tasks/claim/batch", "Lease up to `count` tasks", "worker",
              wire.BATCH_CLAIM, answers={200: "TaskList", 204: "no task came"},
              links={op: _FIRST_TASK_ID for op in _LEASED}),
    Operation("POST", f"{PREFIX}/tasks/batch/results", "Report up to 1000 results", "worker",
              wire.BATCH_RESULTS, answers={200: "BatchResults"}),
    Operation("POST", f"{_TASK_ID}/heartbeat", "Extend a lease", "worker",
              wire.HEARTBEAT, answers={200: "Heartbeat"}),
    Operation("POST", f"{_TASK_ID}/abandon", "Give a task back, next in line", "worker",
              wire.ABANDON, answers={200: "Abandoned"}),
    Operation("POST", f"{_TASK_ID}/nack", "Fail an attempt: retry later or dead-letter",
              "worker", wire.NACK, answers={200: "Nacked"}),
    Operation("POST", f"{_TASK_ID}/result", "Report a task's outcome", "worker",
              wire.RESULT, answers={200: "Result"}, links={"getTasksIdResult": "$request.path.id"}),
    Operation("GET", _TASK_ID, "Read a task", "any", answers={200: "Task"}),
    Operation("GET", f"{_TASK_ID}/result", "Read a task and its result (long-poll)", "any",
              query=wire.RESULT_QUERY, answers={200: "TaskResult"}),
    Operation("GET", f"{_TASK_ID}/history", "A task's timeline", "any",
              answers={200: "History"}),
    Operation("POST", f"{_TASK_ID}/cancel", "Cancel a task", "producer", wire.CANCEL,
              answers={200: "Task", 202: "CancelRequested"}),
    Operation("POST", _SUBS, "Subscribe to work-available webhooks", "worker",
              wire.SUBSCRIBE, answers={200: "Subscription"},
              links={"postWorkersSubscriptionsIdHeartbeat": _SUBSCRIPTION_ID,
                     "deleteWorkersSubscriptionsId": _SUBSCRIPTION_ID}),
    Operation("GET", _SUBS, "The tenant's live subscriptions", "worker",
              answers={200: "SubscriptionList"}),
    Operation("POST", f"{_SUBS}/{{id}}/heartbeat", "Renew a subscription", "worker",
              wire.SUBSCRIPTION_HEARTBEAT, answers={200: "SubscriptionRenewed"}),
    Operation("DELETE", f"{_SUBS}/{{id}}", "End a subscription", "worker",
              answers={204: "deleted"}),
    Operation("GET", f"{PREFIX}/admin/queues", "Stats of every queue", "admin",
              answers={200: "QueueStatsList"}),
    Operation("GET", _QUEUE, "Stats of one queue", "admin", answers={200: "QueueStats"}),
    Operation("GET", f"{_TASK_ID}/artifacts/{{name}}", "An inline artifact of the task",
              "any", answers={200: "bytes"}),
    Operation("GET", f"{_QUEUE}/stats", "Stats of one queue (the path of codeQ's older SDKs)",
              "admin", answers={200: "QueueStats"}),
    Operation("POST", f"{_QUEUE}/pause", "Pause claims of a command", "admin",
              answers={200: "Paused"}),
    Operation("POST", f"{_QUEUE}/resume", "Resume claims of a command", "admin",
              answers={200: "Paused"}),
    Operation("POST", f"{_QUEUE}/purge", "Delete ready and delayed tasks", "admin",
              answers={200: "Purged"}),
    Operation("GET", f"{_QUEUE}/settings", "A queue's concurrency-key settings", "admin",
              answers={200: "QueueSettings"}),
    Operation("POST", f"{_QUEUE}/settings",
              "Set maxInFlightPerKey and fairness (fields left out stay)", "admin",
              wire.QUEUE_SETTINGS, answers={200: "QueueSettings"}),
    Operation("GET", f"{_QUEUE}/dlq", "List dead-lettered tasks", "admin",
              query=wire.DLQ_QUERY, answers={200: "DeadLetterPage"}),
    Operation("POST", f"{_QUEUE}/dlq/redrive", "Move dead-lettered tasks back to ready",
              "admin", wire.REDRIVE, answers={200: "Redriven"}),
    Operation("GET", f"{_QUEUE}/tasks", "List a command's tasks in one state", "admin",
              query=wire.TASK_LIST_QUERY, answers={200: "TaskPage"}),
    Operation("POST", f"{PREFIX}/admin/tasks/{{id}}/requeue",
              "End an in-progress task's lease: back in line now", "admin", wire.END_LEASE,
              answers={200: "LeaseEnded", 404: "Error", 409: "Error"}),
    Operation("POST", f"{PREFIX}/admin/tasks/{{id}}/fail",
              "End an in-progress task's lease: FAILED now", "admin", wire.END_LEASE,
              answers={200: "LeaseEnded", 404: "Error", 409: "Error"}),
    Operation("POST", f"{PREFIX}/admin/tasks/cleanup", "Apply retention", "admin",
              wire.CLEANUP, answers={200: "Cleanup"}),
    Operation("GET", f"{PREFIX}/admin/callbacks", "Abandoned result callbacks", "admin",
              query=wire.CALLBACKS_QUERY, answers={200: "AbandonedCallbacks"}),
    Operation("GET", f"{PREFIX}/admin/schedules", "The tenant's recurring schedules", "admin",
              answers={200: "ScheduleList"}),
    Operation("PUT", _SCHEDULE, "Create or replace a recurring schedule", "admin",
              wire.SCHEDULE, answers={200: "Schedule", 201: "Schedule"}),
    Operation("GET", _SCHEDULE, "A schedule and its next 5 fire times", "admin",
              answers={200: "Schedule", 404: "Error"}),
    Operation("DELETE", _SCHEDULE, "Delete a schedule (its tasks stay)", "admin",
              answers={200: "ScheduleDeleted", 404: "Error"}),
    Operation("POST", f"{_SCHEDULE}/pause", "Pause a schedule", "admin",
              answers={200: "Schedule", 404: "Error"}),
    Operation("POST", f"{_SCHEDULE}/resume", "Resume a schedule from its next fire time",
              "admin", answers={200: "Schedule", 404: "Error", 409: "Error"}),
    Operation("POST", f"{_SCHEDULE}/run", "Make the schedule's task now", "admin",
              answers={202: "Task", 404: "Error", 409: "Error"}),
)  # fmt: skip

_ERRORS = {
    "producer": (400, 401, 403, 404, 409, 413, 429, 503),
    "worker": (400, 401, 403, 404, 409, 413, 429, 503),
    "any": (400, 401, 403, 404, 503),
    "admin": (400, 401, 403, 413, 429, 503),
    "none": (),
}

# ------------------------------------------------------------ responses


def _object(
    required: Mapping[str, Any], optional: Mapping[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """An answer object: the fields always there, and those there only when set."""
    return {"type": "object", "required": list(required),
            "properties": {**required, **(optional or {})}, **extra}  # fmt: skip


_STRING, _INT, _NUMBER, _BOOL = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
)
_TIME = {"type": "string", "format": "date-time"}
_STRINGS = {"type": "array", "items": _STRING}
_OBJECT = {"type": "object", "additionalProperties": True}


def _nullable(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_TASK_STATUS = {"type": "string", "enum": ["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED",
                                          "CANCELLED"]}  # fmt: skip
# wire.task_to_wire: the fields always there, then those left out when empty (omitempty).
_TASK_REQUIRED = {
    "id": _STRING,
    "command": _STRING,
    "payload": {**_STRING, "description": "the producer's JSON value, as a JSON string"},
    "priority": _INT,
    "status": _TASK_STATUS,
    "attempts": _INT,
    "maxAttempts": _INT,
    "tenantId": _STRING,
    "createdAt": _TIME,
    "updatedAt": _TIME,
}
_TASK_OPTIONAL = {
    "webhook": _STRING,
    "workerId": _STRING,
    "leaseUntil": _TIME,
    "error": _STRING,
    "runAt": _TIME,
    "idempotencyKey": _STRING,
    "traceParent": _STRING,
    "traceState": _STRING,
    "concurrencyKey": _STRING,
    "retryReason": _STRING,
    "lastError": _STRING,
    "redriveCount": _INT,
    "cancelRequested": _BOOL,
}
_LEASE_TOKEN = {**_STRING, "description": "the lease's fencing token (claims only)"}
_RESULT_STATUS = {"type": "string", "enum": ["COMPLETED", "FAILED"]}
_ERROR_ITEM = {"error": _STRING, "code": _INT}
# wire.result_to_wire: a COMPLETED result has no error, a FAILED one may have no result
_RESULT = _object(
    {
        "taskId": _STRING,
        "status": _RESULT_STATUS,
        "result": _nullable(_OBJECT),
        "error": _nullable(_STRING),
        "artifacts": {"type": "array", "items": _ref("ArtifactLink")},
        "completedAt": _TIME,
    }
)

SCHEMAS: Mapping[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": _STRING},
              "description": "extra fields name more (field, index, task, …)"},
    "CreateTask": shape_schema(wire.CREATE),
    "ResultItem": shape_schema(wire.BATCH_RESULT_ITEM),
    "Artifact": {"oneOf": [_ref("ArtifactReference"), _ref("InlineArtifact")]},
    # an item without contentBase64 is a reference
    "ArtifactReference": shape_schema(wire.ARTIFACT_REFERENCE)
    | {"not": {"required": ["contentBase64"]}},
    "InlineArtifact": shape_schema(wire.INLINE_ARTIFACT),
    "ArtifactLink": _object({"name": _STRING, "url": _STRING}),
    "Task": _object(_TASK_REQUIRED, _TASK_OPTIONAL),
    "LeasedTask": _object(_TASK_REQUIRED, {**_TASK_OPTIONAL, "leaseToken": _LEASE_TOKEN}),
    "DeadLetter": _object({**_TASK_REQUIRED, "deadLetteredAt": _TIME}, _TASK_OPTIONAL),
    "TaskList": _object({"tasks": {"type": "array", "items": _ref("LeasedTask")}}),
    "Result": _RESULT,
    # (inline, not a $ref: OpenAPI 3.0 ignores what stands beside a $ref, nullable too)
    "TaskResult": _object({"task": _ref("Task"), "result": _nullable(_RESULT)},
                          description="result is null for a task that ended without one "
                          "(CANCELLED)"),
    "BatchCreated": _object({"results": {"type": "array", "items": {
        "oneOf": [_object({"task": _ref("Task")}), _object(_ERROR_ITEM)]}}}),
    "BatchResults": _object({"results": {"type": "array", "items": {"oneOf": [
        _object({"taskId": _STRING, "result": _ref("Result")}),
        # an item that was not an object echoes whatever its taskId was
        _object({"taskId": {"description": "the item's taskId, as sent"}, **_ERROR_ITEM}),
    ]}}}),
    "Heartbeat": _object({"ok": _BOOL, "leaseUntil": _TIME}),
    "Abandoned": _object({"status": _STRING}),
    "Nacked": _object({"status": {"type": "string", "enum": ["requeued", "dlq", "cancelled"]}},
                      {"delaySeconds": _INT, "error": _STRING}),
    "CancelRequested": _object({"status": {"type": "string", "enum": ["cancel_requested"]},
                                "task": _ref("Task")}),
    "History": _object({"taskId": _STRING, "history": {"type": "array", "items": _object(
        {"at": _TIME, "event": _STRING}, additionalProperties=True)}}),
    "QueueStats": _object({"command": _STRING, "ready": _INT, "delayed": _INT,
                           "inProgress": _INT, "dlq": _INT, "paused": _BOOL}),
    "QueueStatsList": {"type": "array", "items": _ref("QueueStats")},
    "Paused": _object({"command": _STRING, "paused": _BOOL}),
    "Purged": _object({"purged": _INT}),
    "QueueSettings": _object({"command": _STRING, "maxInFlightPerKey": _INT,
                              "fairness": {"type": "string", "enum": ["none", "round_robin"]}}),
    "DeadLetterPage": _object({"tasks": {"type": "array", "items": _ref("DeadLetter")},
                               "nextCursor": _nullable(_STRING)}),
    "TaskPage": _object({"command": _STRING,
                         "status": {"type": "string", "enum": [s.value for s in TaskState]},
                         "tasks": {"type": "array", "items": _ref("Task")},
                         "nextCursor": _nullable(_STRING)}),
    "LeaseEnded": _object({"status": {"type": "string",
                                      "enum": ["requeued", "cancelled", "failed"]},
                           "task": _ref("Task")}),
    "Redriven": _object({"redriven": _INT, "ids": _STRINGS, "skipped": _STRINGS,
                         "dryRun": _BOOL}),
    "Cleanup": _object({"deleted": _INT, "before": _TIME, "limit": _INT, "endedBefore": _TIME}),
    "AbandonedCallbacks": _object({"abandoned": {"type": "array", "items": _object({
        "id": _STRING, "taskId": _STRING, "url": _STRING, "command": _STRING,
        "status": _nullable(_STRING), "attempts": _INT, "lastError": _nullable(_STRING),
        "createdAt": _TIME, "abandonedAt": _nullable(_TIME)})}}),
    "Subscription": _object({
        "subscriptionId": _STRING, "expiresAt": _TIME, "id": _STRING, "callbackUrl": _STRING,
        "eventTypes": _STRINGS,
        "deliveryMode": {"type": "string", "enum": ["fanout", "group", "hash"]},
        "minIntervalSeconds": _NUMBER, "createdAt": _TIME, "workerId": _STRING},
        {"groupId": _STRING}),
    "SubscriptionList": _object({"subscriptions": {"type": "array",
                                                   "items": _ref("Subscription")}}),
    "SubscriptionRenewed": _object({"subscriptionId": _STRING, "expiresAt": _TIME}),
    "Schedule": _object({
        "name": _STRING, "command": _STRING, "payload": {}, "priority": _INT,
        "timezone": _STRING, "misfire": {"type": "string", "enum": ["skip", "run_once"]},
        "misfireGraceSeconds": _INT, "paused": _BOOL,
        "state": {"type": "string", "enum": ["active", "paused", "ended"]},
        "nextFireTimes": {"type": "array", "items": _TIME}, "fires": _INT, "misfires": _INT,
        "version": _INT, "createdAt": _TIME, "updatedAt": _TIME},
        {"cron": _STRING, "intervalSeconds": _INT, "maxAttempts": _INT, "webhook": _STRING,
         "startAt": _TIME, "endAt": _TIME, "lastFireAt": _TIME, "lastTaskId": _STRING}),
    "ScheduleList": _object({"schedules": {"type": "array", "items": _ref("Schedule")}}),
    "ScheduleDeleted": _object({"name": _STRING, "deleted": _BOOL}),
    "Health": _object({"status": _STRING}),
    "Readiness": _object({"status": {"type": "string",
                                    "enum": ["ready", "degraded", "unavailable", "draining"]}},
                         additionalProperties=True),
}  # fmt: skip


# ------------------------------------------------------------ the document


def _answer(description: str) -> dict[str, Any]:
    if description == "object":
        return {"description": "OK", "content": {JSON: {"schema": _OBJECT}}}
    if description == "text":
        return {"description": "OK", "content": {"text/plain": {"schema": _STRING}}}
    if description == "bytes":  # the content type the artifact was stored with
        binary = {"type": "string", "format": "binary"}
        return {"description": "OK", "content": {"*/*": {"schema": binary}}}
    if description in SCHEMAS:
        return {"description": "OK", "content": {JSON: {"schema": _ref(description)}}}
    return {"description": description}


def _path_parameters(op: Operation) -> list[dict[str, Any]]:
    params = []
    for name in ("id", "command", "name", "schedule"):
        if f"{{{name}}}" in op.path:
            kind = "subscription" if name == "id" and op.path.startswith(_SUBS) else name
            params.append({"name": name, "in": "path", "required": True,
                           "schema": PATH_PARAMETERS[kind]})  # fmt: skip
    return params


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op)}
    params = _path_parameters(op) + (_query(op.query) if op.query is not None else [])
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {
            # an empty body reads as {}: a body is needed only if a field is
            "required": bool(op.body.exactly_one)
            or any(spec.required for spec in op.body.fields.values()),
            "content": {JSON: {"schema": shape_schema(op.body)}},
        }
    responses = {str(status): _answer(text) for status, text in op.answers.items()}
    if op.links:
        success = str(min(op.answers))
        responses[success]["links"] = {
            target: {"operationId": target, "parameters": {"id": expression}}
            for target, expression in op.links.items()
        }
    for status in _ERRORS[op.auth]:
        responses[str(status)] = {
            "description": "error",
            "content": {JSON: {"schema": _ref("Error")}},
        }
    doc["responses"] = responses
    if op.auth != "none":
        doc["security"] = [{"bearer": []}]
        doc["x-codeq-auth"] = op.auth
    return doc


def _operation_id(op: Operation) -> str:
    words = [w.strip("{}") for w in op.path.removeprefix(PREFIX).split("/") if w]
    return op.method.lower() + "".join(w[:1].upper() + w[1:] for w in words)


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document, built once."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    try:
        release = version("codeq")
    except PackageNotFoundError:
        release = "0"
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "codeq",
            "version": release,
            "description": "codeQ's v1 task API (wire-compatible) with codeq's extensions. "
            'Errors are {"error": …}; unknown body fields are ignored and named in the '
            "X-CodeQ-Warning header; a null field, or an empty string, reads as absent. "
            "The WebSocket streams are described in the README.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
