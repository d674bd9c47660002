"""Schemathesis hooks of the API fuzz suite (tests/test_fuzz.py), which its
`schemathesis run` loads by SCHEMATHESIS_HOOKS. They keep the run on this machine and
inside its time budget, and they only ever replace a value the document calls valid
by another valid one, so no disagreement between the document and the server is
hidden; filter_failure names the two answers that are not failures."""

from __future__ import annotations

import os
import random
from typing import Any

import orjson
import schemathesis

from codeq import wire
from codeq.domain import DlqPosition

# Every valid URL the fuzzer sends (webhook, callbackUrl, an artifact's url) becomes
# one of the test's own receiver on loopback, which the fuzz daemon's
# webhookAllowedHosts lets through: no callback, notification or DNS lookup leaves
# the machine. An invalid URL is sent as generated.
_RECEIVER = f"http://127.0.0.1:{os.environ['CODEQ_FUZZ_RECEIVER_PORT']}/"
_URLS = {"webhook": wire.CREATE["webhook"], "callbackUrl": wire.SUBSCRIBE["callbackUrl"],
         "url": wire.ARTIFACT_REFERENCE["url"]}  # fmt: skip
_CURSOR = wire.DLQ_QUERY["cursor"]
_TASK_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def _valid_url(spec: wire.Field, value: Any) -> bool:
    return (
        isinstance(value, str)
        and spec.matches(value)
        and (spec.max_length is None or len(value) <= spec.max_length)
    )


def _local(values: Any, rng: random.Random) -> None:
    """Valid URLs, at any depth, point at the receiver; inline artifacts of one result
    get distinct names (a rule JSON Schema cannot state, the document says it)."""
    if isinstance(values, list):
        for item in values:
            _local(item, rng)
        return
    if not isinstance(values, dict):
        return
    for name, spec in _URLS.items():
        if _valid_url(spec, values.get(name)):
            values[name] = f"{_RECEIVER}{rng.randrange(1000)}"
    artifacts = values.get("artifacts")
    if isinstance(artifacts, list):
        inline = [a for a in artifacts if isinstance(a, dict) and isinstance(a.get("name"), str)]
        for index, artifact in enumerate(a for a in inline if "contentBase64" in a):
            if wire.INLINE_ARTIFACT["name"].matches(artifact["name"]):
                artifact["name"] = f"{artifact['name'][:120]}-{index}"
    for value in values.values():
        _local(value, rng)


def _cursor(rng: random.Random) -> str:
    """A cursor the server could have returned: a DLQ position of a task id."""
    task_id = "".join(rng.choice("0123456789abcdef") for _ in range(12))
    task_id += "-" + "".join(rng.choice(_TASK_ID_ALPHABET) for _ in range(22))
    cursor = wire.encode_cursor(DlqPosition(rng.randrange(2**53), task_id))
    assert cursor is not None
    return cursor


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Keeps the call local and short: valid URLs go to the receiver, a valid-looking
    DLQ cursor becomes one the server could have minted, and a long-poll (any
    waitSeconds is valid: it is clamped) waits at most 0 s, so no call takes up to a
    minute."""
    rng = random.Random(repr((case.path, case.body, case.query)))
    _local(case.body, rng)
    if isinstance(case.body, dict):
        wait = case.body.get("waitSeconds")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
            case.body["waitSeconds"] = 0
    if isinstance(case.query, dict):
        if isinstance(case.query.get("waitSeconds"), str | int | float):
            case.query["waitSeconds"] = "0"
        cursor = case.query.get("cursor")
        if isinstance(cursor, str) and cursor and _CURSOR.matches(cursor):
            case.query["cursor"] = _cursor(rng)


_BATCHES = ("POST /v1/codeq/tasks/batch", "POST /v1/codeq/tasks/batch/results")
_RESULT = "GET /v1/codeq/tasks/{id}/result"
_ENDED = ("COMPLETED", "FAILED", "CANCELLED")


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Two answers are codeq's by design, not failures (each is told apart by its body):
    - a batch answers 200 and refuses each bad item in place ({"error", "code"}), so a
      schema-violating item is rejected even though the batch is accepted;
    - the result of a task that has not ended is a 404 "result not found", as codeQ
      answers it, though the task was just created (the check reads it as lost)."""
    code, label = getattr(failure, "code", None), case.operation.label
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return True
    if code == "ST201" and label in _BATCHES and isinstance(body, dict):
        items = body.get("results")
        return not (isinstance(items, list) and any(_refused(item) for item in items))
    if code == "ST302" and label == _RESULT and isinstance(body, dict):
        task = body.get("task")
        not_ended = isinstance(task, dict) and task.get("status") not in _ENDED
        return not (body.get("error") == "result not found" and not_ended)
    return True


def _refused(item: Any) -> bool:
    return isinstance(item, dict) and item.get("code") == 400
