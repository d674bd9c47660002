"""The OpenAPI 3 document of the HTTP API (GET /openapi.json).

Built from one table of operations whose request bodies and query parameters are
the very field sets codeq.wire validates against, so a field added to the wire is
missing here until it is described (a test checks both, and that every route the
HTTP transport serves is in the table and nothing else is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from codeq import wire

PREFIX = "/v1/codeq"
JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_STRING, _INT, _NUMBER, _BOOL = (
    {"type": "string"},
    {"type": "integer"},
    {"type": "number"},
    {"type": "boolean"},
)
_TIME = {"type": "string", "format": "date-time"}
_STRINGS = {"type": "array", "items": _STRING}
_OBJECT = {"type": "object", "additionalProperties": True}

# Every request field, by name: what it holds (the README's HTTP API says more).
FIELD_SCHEMAS: Mapping[str, dict[str, Any]] = {
    "command": {**_STRING, "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
    "payload": _OBJECT,
    "priority": {**_INT, "description": "0..9, higher first; other values are clamped"},
    "maxAttempts": {**_INT, "minimum": 1, "maximum": 1000},
    "webhook": {**_STRING, "format": "uri", "description": "result callback URL"},
    "idempotencyKey": {**_STRING, "maxLength": 256},
    "runAt": _TIME,
    "delaySeconds": {**_NUMBER, "minimum": 0},
    "traceParent": _STRING,
    "traceState": _STRING,
    "commands": _STRINGS,
    "leaseSeconds": {**_INT, "minimum": 1},
    "waitSeconds": {**_NUMBER, "minimum": 0, "maximum": 30},
    "count": {**_INT, "minimum": 1, "maximum": wire.MAX_BATCH},
    "extendSeconds": {**_INT, "minimum": 1},
    "leaseToken": {**_STRING, "description": "the claim's fencing token (or X-Lease-Token)"},
    "reason": _STRING,
    "status": {"type": "string", "enum": ["COMPLETED", "FAILED"]},
    "result": _OBJECT,
    "error": _STRING,
    "artifacts": {"type": "array", "items": _ref("Artifact")},
    "taskId": _STRING,
    "tasks": {"type": "array", "items": _ref("CreateTask"), "maxItems": wire.MAX_BATCH},
    "results": {"type": "array", "items": _ref("ResultItem"), "maxItems": wire.MAX_BATCH},
    "limit": {**_INT, "minimum": 1},
    "before": _TIME,
    "ids": _STRINGS,
    "all": _BOOL,
    "ratePerSecond": {**_NUMBER, "minimum": 0.1},
    "dryRun": _BOOL,
    "cursor": _STRING,
    "olderThanSeconds": {**_INT, "minimum": 0},
    "newerThanSeconds": {**_INT, "minimum": 0},
    "callbackUrl": {**_STRING, "format": "uri"},
    "eventTypes": _STRINGS,
    "ttlSeconds": {**_INT, "minimum": 1},
    "deliveryMode": {"type": "string", "enum": ["fanout", "group", "hash"]},
    "groupId": _STRING,
    "minIntervalSeconds": {**_NUMBER, "minimum": 0},
}
REQUIRED: Mapping[frozenset[str], list[str]] = {
    wire.CREATE_FIELDS: ["command"],
    wire.RESULT_FIELDS: ["status"],
    wire.BATCH_CREATE_FIELDS: ["tasks"],
    wire.BATCH_RESULTS_FIELDS: ["results"],
    wire.BATCH_RESULT_ITEM_FIELDS: ["taskId", "status"],
    wire.SUBSCRIBE_FIELDS: ["callbackUrl"],
}


def body_schema(fields: frozenset[str]) -> dict[str, Any]:
    """A JSON object of these fields (unknown fields are ignored, and named back)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: FIELD_SCHEMAS[name] for name in sorted(fields)},
    }
    if fields in REQUIRED:
        schema["required"] = REQUIRED[fields]
    return schema


@dataclass(frozen=True, slots=True)
class Operation:
    """One endpoint: method, path (aiohttp's {param} form), who may call it, what it
    takes and answers."""

    method: str
    path: str
    summary: str
    auth: str  # producer | worker | any | admin | none
    body: frozenset[str] | None = None
    query: frozenset[str] = frozenset()
    answers: Mapping[int, str] = field(default_factory=dict)  # status -> schema or text


_TASK_ID = f"{PREFIX}/tasks/{{id}}"
_QUEUE = f"{PREFIX}/admin/queues/{{command}}"
_SUBS = f"{PREFIX}/workers/subscriptions"

OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/healthz", "The process is alive", "none", answers={200: "object"}),
    Operation("GET", "/readyz", "Store reachable, actors running", "none",
              answers={200: "object", 503: "object"}),
    Operation("GET", "/metrics", "Prometheus metrics (text format)", "none",
              answers={200: "text"}),
    Operation("GET", "/openapi.json", "This document", "none", answers={200: "object"}),
    Operation("POST", f"{PREFIX}/tasks", "Create a task", "producer", wire.CREATE_FIELDS,
              answers={202: "Task"}),
    Operation("POST", f"{PREFIX}/tasks/batch", "Create up to 1000 tasks", "producer",
              wire.BATCH_CREATE_FIELDS, answers={200: "BatchCreated"}),
    Operation("POST", f"{PREFIX}/tasks/claim", "Lease the next task (long-poll)", "worker",
              wire.CLAIM_FIELDS, answers={200: "Task", 204: "no task came"}),
    Operation("POST", f"{PREFIX}/tasks/claim/batch", "Lease up to `count` tasks", "worker",
              wire.BATCH_CLAIM_FIELDS, answers={200: "TaskList", 204: "no task came"}),
    Operation("POST", f"{PREFIX}/tasks/batch/results", "Report up to 1000 results", "worker",
              wire.BATCH_RESULTS_FIELDS, answers={200: "BatchResults"}),
    Operation("POST", f"{_TASK_ID}/heartbeat", "Extend a lease", "worker",
              wire.HEARTBEAT_FIELDS, answers={200: "object"}),
    Operation("POST", f"{_TASK_ID}/abandon", "Give a task back, next in line", "worker",
              wire.ABANDON_FIELDS, answers={200: "object"}),
    Operation("POST", f"{_TASK_ID}/nack", "Fail an attempt: retry later or dead-letter",
              "worker", wire.NACK_FIELDS, answers={200: "object"}),
    Operation("POST", f"{_TASK_ID}/result", "Report a task's outcome", "worker",
              wire.RESULT_FIELDS, answers={200: "Result"}),
    Operation("GET", _TASK_ID, "Read a task", "any", answers={200: "Task"}),
    Operation("GET", f"{_TASK_ID}/result", "Read a task and its result (long-poll)", "any",
              query=frozenset({"waitSeconds"}), answers={200: "TaskResult"}),
    Operation("GET", f"{_TASK_ID}/history", "A task's timeline", "any",
              answers={200: "object"}),
    Operation("POST", f"{_TASK_ID}/cancel", "Cancel a task", "producer", wire.CANCEL_FIELDS,
              answers={200: "Task", 202: "object"}),
    Operation("POST", _SUBS, "Subscribe to work-available webhooks", "worker",
              wire.SUBSCRIBE_FIELDS, answers={200: "Subscription"}),
    Operation("GET", _SUBS, "The tenant's live subscriptions", "worker",
              answers={200: "object"}),
    Operation("POST", f"{_SUBS}/{{id}}/heartbeat", "Renew a subscription", "worker",
              wire.SUBSCRIPTION_HEARTBEAT_FIELDS, answers={200: "object"}),
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
              answers={200: "object"}),
    Operation("POST", f"{_QUEUE}/resume", "Resume claims of a command", "admin",
              answers={200: "object"}),
    Operation("POST", f"{_QUEUE}/purge", "Delete ready and delayed tasks", "admin",
              answers={200: "object"}),
    Operation("GET", f"{_QUEUE}/dlq", "List dead-lettered tasks", "admin",
              query=wire.DLQ_QUERY_FIELDS, answers={200: "object"}),
    Operation("POST", f"{_QUEUE}/dlq/redrive", "Move dead-lettered tasks back to ready",
              "admin", wire.REDRIVE_FIELDS, answers={200: "object"}),
    Operation("POST", f"{PREFIX}/admin/tasks/cleanup", "Apply retention", "admin",
              wire.CLEANUP_FIELDS, answers={200: "object"}),
    Operation("GET", f"{PREFIX}/admin/callbacks", "Abandoned result callbacks", "admin",
              query=wire.CALLBACKS_QUERY_FIELDS, answers={200: "object"}),
)  # fmt: skip

_ERRORS = {
    "producer": (400, 401, 403, 404, 409, 413, 429, 503),
    "worker": (400, 401, 403, 404, 409, 413, 429, 503),
    "any": (400, 401, 404, 503),
    "admin": (400, 401, 403, 429, 503),
    "none": (),
}

_TASK_PROPERTIES = {
    "id": _STRING,
    "command": _STRING,
    "payload": {**_STRING, "description": "the producer's JSON object, as a JSON string"},
    "priority": _INT,
    "status": {"type": "string", "enum": ["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED",
                                          "CANCELLED"]},
    "attempts": _INT,
    "maxAttempts": _INT,
    "tenantId": _STRING,
    "createdAt": _TIME,
    "updatedAt": _TIME,
    "webhook": _STRING,
    "workerId": _STRING,
    "leaseUntil": _TIME,
    "leaseToken": _STRING,
    "error": _STRING,
    "runAt": _TIME,
    "idempotencyKey": _STRING,
    "traceParent": _STRING,
    "traceState": _STRING,
}  # fmt: skip

SCHEMAS: Mapping[str, dict[str, Any]] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": _STRING}},
    "Artifact": {"type": "object", "properties": {"name": _STRING, "url": _STRING}},
    "CreateTask": body_schema(wire.CREATE_FIELDS),
    "ResultItem": body_schema(wire.BATCH_RESULT_ITEM_FIELDS),
    "Task": {"type": "object", "properties": _TASK_PROPERTIES},
    "TaskList": {"type": "object", "properties": {"tasks": {"type": "array",
                                                            "items": _ref("Task")}}},
    "Result": {
        "type": "object",
        "properties": {"taskId": _STRING, "status": _STRING, "result": _OBJECT,
                       "error": _STRING, "artifacts": FIELD_SCHEMAS["artifacts"],
                       "completedAt": _TIME},
    },
    "TaskResult": {"type": "object", "properties": {"task": _ref("Task"),
                                                    "result": _ref("Result")}},
    "BatchCreated": {"type": "object", "properties": {"results": {"type": "array", "items": {
        "type": "object", "properties": {"task": _ref("Task"), "error": _STRING,
                                         "code": _INT}}}}},
    "BatchResults": {"type": "object", "properties": {"results": {"type": "array", "items": {
        "type": "object", "properties": {"taskId": _STRING, "result": _ref("Result"),
                                         "error": _STRING, "code": _INT}}}}},
    "QueueStats": {"type": "object", "properties": {
        "command": _STRING, "ready": _INT, "delayed": _INT, "inProgress": _INT, "dlq": _INT,
        "paused": _BOOL}},
    "QueueStatsList": {"type": "array", "items": _ref("QueueStats")},
    "Subscription": {"type": "object", "properties": {
        "subscriptionId": _STRING, "expiresAt": _TIME, "callbackUrl": _STRING,
        "eventTypes": _STRINGS, "deliveryMode": FIELD_SCHEMAS["deliveryMode"],
        "groupId": _STRING, "minIntervalSeconds": _NUMBER, "createdAt": _TIME}},
}  # fmt: skip


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


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(op)}
    params = [
        {"name": name, "in": "path", "required": True, "schema": _STRING}
        for name in ("id", "command", "name")
        if f"{{{name}}}" in op.path
    ]
    params += [
        {"name": name, "in": "query", "schema": FIELD_SCHEMAS[name]} for name in sorted(op.query)
    ]
    if params:
        doc["parameters"] = params
    if op.body is not None:
        doc["requestBody"] = {"content": {JSON: {"schema": body_schema(op.body)}}}
    responses = {str(status): _answer(text) for status, text in op.answers.items()}
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
            "X-CodeQ-Warning header. The WebSocket streams are described in the README.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(SCHEMAS),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
