"""GET /openapi.json: a valid OpenAPI 3 document of exactly the routes the HTTP
transport serves, whose bodies are the field sets the wire validates."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from codeq_transports.http import build_app
from conftest import RunningDaemon
from openapi_schema_validator import OAS30Validator
from openapi_schema_validator import validate as validate_answer
from openapi_spec_validator import validate

from codeq import openapi, wire
from codeq.domain import (
    Artifact,
    Callback,
    DeadLetter,
    DeliveryMode,
    DlqPage,
    DlqPosition,
    HistoryEntry,
    Invalid,
    NackOutcome,
    QueueStats,
    RedriveOutcome,
    Result,
    Status,
    Subscription,
    Task,
)


def served_routes(daemon: RunningDaemon) -> set[tuple[str, str]]:
    transport = daemon.daemon.transports[0]
    app = build_app(transport._ctx)  # type: ignore[attr-defined]
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


async def test_document_is_served_and_valid(
    daemon: RunningDaemon, http: aiohttp.ClientSession
) -> None:
    """The daemon serves the document without auth, and it validates as OpenAPI 3."""
    async with http.get(daemon.url + "/openapi.json") as resp:
        assert resp.status == 200
        document: dict[str, Any] = await resp.json()
    assert document["openapi"].startswith("3.")
    validate(document)


def test_every_route_is_documented_and_nothing_else(daemon: RunningDaemon) -> None:
    """The operations table and the HTTP transport's router name the same routes."""
    documented = {(op.method, op.path) for op in openapi.OPERATIONS}
    assert documented == served_routes(daemon)


def test_every_wire_shape_is_documented() -> None:
    """Each body and query the wire validates against (a wire.Shape) is rendered by an
    operation or by a schema its items refer to, and each field set the transports
    name unknown fields against is one of them, so nothing validated goes undocumented."""
    shapes = {name: v for name, v in vars(wire).items() if isinstance(v, wire.Shape)}
    documented = [op.body for op in openapi.OPERATIONS] + [op.query for op in openapi.OPERATIONS]
    documented += [wire.CREATE, wire.BATCH_RESULT_ITEM, wire.ARTIFACT_REFERENCE]
    documented += [wire.INLINE_ARTIFACT]  # batch items and artifacts, by $ref
    for name, shape in shapes.items():
        assert any(shape is d for d in documented), f"wire.{name} is documented nowhere"
    field_sets = {
        name: value
        for name, value in vars(wire).items()
        if name.endswith("_FIELDS") and isinstance(value, frozenset)
    }
    for name, fields in field_sets.items():
        assert any(fields == s.names for s in shapes.values()), f"wire.{name} is no Shape's"


def test_request_schemas_are_the_wire_declarations() -> None:
    """Every body and query parameter of the document is rendered from the wire's
    declaration of it, field for field."""
    paths = openapi.document()["paths"]
    for op in openapi.OPERATIONS:
        doc = paths[op.path][op.method.lower()]
        if op.body is not None:
            schema = doc["requestBody"]["content"]["application/json"]["schema"]
            assert schema == openapi.shape_schema(op.body)
            assert set(schema["properties"]) == op.body.names
        query = {p["name"]: p for p in doc.get("parameters", ()) if p["in"] == "query"}
        assert set(query) == (op.query.names if op.query is not None else set())
        for name, param in query.items():
            assert op.query is not None
            assert param["schema"] == openapi.field_schema(op.query[name], in_query=True)


def test_operations_answer_with_known_schemas() -> None:
    """Every $ref in the document points at a schema it defines."""
    document = openapi.document()
    defined = set(document["components"]["schemas"])

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {node["$ref"].rsplit("/", 1)[1]} if "$ref" in node else set()
            return found.union(*(refs(v) for v in node.values()))
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node))
        return set()

    assert refs(document) <= defined


_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_BARE_TASK = Task("0123456789ab-AAAAAAAAAAAA", "A", "{}", 0, Status.PENDING, 0, 5, "acme", _MS, _MS)
_FULL_TASK = replace(
    _BARE_TASK,
    status=Status.IN_PROGRESS,
    webhook="https://example.com/hook",
    worker_id="w",
    lease_until_ms=_MS,
    lease_token="t",
    error="boom",
    run_at_ms=_MS,
    idempotency_key="k",
    trace_parent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    trace_state="a=1",
    cancel_requested=True,
    extra={"retryReason": "LEASE_EXPIRED", "lastError": "x", "redriveCount": "2"},
)
_FAILED = Result(_BARE_TASK.id, Status.FAILED, None, "boom", (), _MS)
_COMPLETED = Result(_BARE_TASK.id, Status.COMPLETED, {"ok": 1}, None, (Artifact("a", "u"),), _MS)
_SUBSCRIPTION = Subscription("0123456789ab-BBBBBBBBBBBB", "https://example.com/n", ("A",),
                             DeliveryMode.GROUP, "g", 5.0, _MS, _MS, "w")  # fmt: skip
_CALLBACK = Callback("c", _BARE_TASK.id, "https://example.com/hook", "A", {}, 3, _MS)

ANSWERS: list[tuple[str, Any]] = [
    ("Task", wire.task_to_wire(_BARE_TASK)),
    ("Task", wire.task_to_wire(_FULL_TASK)),
    ("LeasedTask", wire.task_to_wire(_FULL_TASK, with_lease_token=True)),
    ("Result", wire.result_to_wire(_FAILED)),
    ("Result", wire.result_to_wire(_COMPLETED)),
    ("TaskResult", {"task": wire.task_to_wire(_BARE_TASK), "result": None}),
    ("Nacked", wire.nack_to_wire(NackOutcome(dead_lettered=True, delay_seconds=0))),
    ("Nacked", wire.nack_to_wire(NackOutcome(dead_lettered=False, delay_seconds=5))),
    ("Nacked", wire.nack_to_wire(NackOutcome(False, 0, cancelled=True))),
    ("DeadLetterPage", wire.dlq_page_to_wire(DlqPage([DeadLetter(_FULL_TASK, _MS)], None))),
    ("DeadLetterPage", wire.dlq_page_to_wire(DlqPage([], DlqPosition(_MS, _BARE_TASK.id)))),
    ("Redriven", wire.redrive_to_wire(RedriveOutcome(["a"], ["b"], dry_run=True))),
    ("QueueStats", wire.stats_to_wire(QueueStats("A", 1, 2, 3, 4, paused=False))),
    ("Subscription", wire.subscription_to_wire(_SUBSCRIPTION)),
    ("Subscription", wire.subscription_to_wire(replace(_SUBSCRIPTION, group_id=None))),
    ("AbandonedCallbacks", {"abandoned": [wire.callback_to_wire(_CALLBACK)]}),
    ("History", {"taskId": _BARE_TASK.id, "history": wire.history_to_wire(
        [HistoryEntry(_MS, "claimed", {"leaseUntil": _MS, "workerId": "w"})])}),
    ("BatchResults", {"results": [{"taskId": 7, **wire.error_item(Invalid("no"), 400)}]}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "answer"), ANSWERS)
def test_answers_are_what_the_document_declares(name: str, answer: Any) -> None:
    """What the wire's encoders write, with every optional field empty or set, is valid
    by the document's schema of that answer: nothing null it calls non-null, nothing
    left out it calls required."""
    components = openapi.document()["components"]
    schema = {"$ref": f"#/components/schemas/{name}", "components": components}
    validate_answer(answer, schema, cls=OAS30Validator)
