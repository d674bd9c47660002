"""Values at the edges of what the wire's field declarations take (codeq.wire.Field),
found by the API fuzz suite: each is answered as the document says."""

from __future__ import annotations

import pytest
from conftest import Api


@pytest.mark.parametrize(
    "run_at",
    ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2999-01-01t00:00:00z"],
    ids=["past-9999-in-utc", "before-year-1-in-utc", "lower-case"],
)
async def test_any_rfc3339_run_at_is_taken_and_shown_again(api: Api, run_at: str) -> None:
    """An RFC 3339 runAt whose UTC instant falls outside years 1..9999 (or that spells
    T and Z in lower case) creates a task that reads back: it was a 500 after the
    task was stored, and every read of it a 500 again."""
    created = await api.create("A", runAt=run_at)
    status, task = await api.get(created["id"])
    assert status == 200, task
    assert task.get("runAt") == created.get("runAt")


async def test_cleanup_before_year_one_in_utc_is_answered(api: Api) -> None:
    """A cleanup cutoff earlier than year 1 in UTC deletes nothing and is answered
    (it was a 500 when the answer named the cutoff)."""
    body = {"before": "0001-01-01T00:00:00+05:00"}
    status, data, _ = await api.call("POST", "/v1/codeq/admin/tasks/cleanup", "admin", body)
    assert status == 200, data
    assert data["deleted"] == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("command", "A\n"), ("webhook", "http://:80/"), ("webhook", "http://a:65536/")],
    ids=["command-newline", "url-without-host", "url-port-out-of-range"],
)
async def test_values_the_document_refuses_are_refused(api: Api, field: str, value: str) -> None:
    """A value outside its field's declared pattern is a 400 naming the field."""
    body = {"command": "A", "payload": {}, field: value}
    status, data, _ = await api.call("POST", "/v1/codeq/tasks", "producer", body)
    assert status == 400, data
    assert data["field"] == field


async def test_a_body_of_blanks_is_malformed(api: Api) -> None:
    """Blanks alone are not JSON: a 400 (no body at all still reads as {})."""
    path = "/v1/codeq/tasks/claim"
    headers = api.headers("worker") | {"Content-Type": "application/json"}
    async with api.http.post(api.base + path, data=b"\n", headers=headers) as resp:
        assert resp.status == 400, await resp.text()
    async with api.http.post(api.base + path, data=b"", headers=headers) as resp:
        assert resp.status == 204, await resp.text()
