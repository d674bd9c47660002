"""GET /openapi.json: a valid OpenAPI 3 document of exactly the routes the HTTP
transport serves, whose bodies are the field sets the wire validates."""

from __future__ import annotations

from typing import Any

import aiohttp
from codeq_transports.http import build_app
from conftest import RunningDaemon
from openapi_spec_validator import validate

from codeq import openapi, wire


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


def test_every_wire_field_is_described() -> None:
    """Each field set the wire validates request bodies and queries against is
    described, field by field, so a new field cannot go undocumented."""
    field_sets = {
        name: value
        for name, value in vars(wire).items()
        if name.endswith("_FIELDS") and isinstance(value, frozenset)
    }
    used = {op.body for op in openapi.OPERATIONS} | {op.query for op in openapi.OPERATIONS}
    used |= {wire.CREATE_FIELDS, wire.BATCH_RESULT_ITEM_FIELDS}  # batch item schemas
    for name, fields in field_sets.items():
        assert fields in used, f"wire.{name} is not documented by any operation"
        missing = fields - set(openapi.FIELD_SCHEMAS)
        assert not missing, f"wire.{name}: {sorted(missing)} have no schema"


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
