"""The API fuzz suite: schemathesis over GET /openapi.json, every operation, against a
real daemon on a real store, with all of its checks (no 5xx, answers conform to the
document, schema-valid requests accepted, schema-violating ones rejected, methods and
auth) in all of its phases, stateful ones along the document's links (create -> get,
history, cancel; claim -> heartbeat, nack, abandon, result, cancel; result -> read the
result; subscribe -> renew, delete).

One store is enough: this is about the wire, which is the same on both. Bounded by
examples per operation (the run takes 20-40 s on 2 cores); the seed is fixed so a
failure reproduces (CODEQ_FUZZ_SEED picks another). The totals are written to the
terminal summary: operations, test cases, requests (as the daemon counted them, by
status), and failures by check."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import (
    ALL_SCOPES,
    TOKENS,
    WORKER_AUD,
    LoopbackServer,
    RunningDaemon,
    StoreProcess,
    store_client,
)

from codeq import metrics
from codeq.config import WEEK_SECONDS, StaticToken

TESTS = Path(__file__).resolve().parent
SEED = int(os.environ.get("CODEQ_FUZZ_SEED", "20261203"))
MAX_EXAMPLES = 30  # per operation and phase
DEADLINE_SECONDS = 100  # a run that has not ended by then fails (within pytest's 120 s)

# One identity that may call every operation: producer, worker (every scope, every
# command, in a worker group) and admin, of tenant acme.
FUZZ_TOKEN = "fuzz-token-all-roles-acme-0001"
FUZZ_CLAIMS = {
    "sub": "fuzz",
    "tenantId": "acme",
    "aud": [WORKER_AUD],
    "scope": ALL_SCOPES,
    "eventTypes": ["*"],
    "role": "ADMIN",
    "workerGroup": "fuzz",
}


class Receiver(LoopbackServer):
    """Takes every webhook and notification the fuzzed tasks and subscriptions send."""

    def add_routes(self, app: web.Application) -> None:
        async def accept(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=204)

        app.router.add_route("*", "/{tail:.*}", accept)


@pytest.fixture
async def receiver() -> Any:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


class Totals:
    """A plugin writing the fuzz totals into the terminal summary, after the run."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for line in self.lines:
            terminalreporter.write_line(line)


@pytest.fixture
def totals(request: pytest.FixtureRequest) -> list[str]:
    """Lines for the terminal summary of the test run."""
    plugins = request.config.pluginmanager
    plugin = plugins.get_plugin("codeq-fuzz-totals")
    if plugin is None:
        plugin = Totals()
        plugins.register(plugin, "codeq-fuzz-totals")
    assert isinstance(plugin, Totals)
    return plugin.lines


def served() -> Counter[str]:
    """HTTP answers by status, as the daemon's request counter has them."""
    counts: Counter[str] = Counter()
    for family in metrics.HTTP_REQUESTS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels["status"]] += int(sample.value)
    return counts


async def test_api_fuzz(
    redis_server: StoreProcess,
    daemons_on: Callable[..., Awaitable[RunningDaemon]],
    receiver: Receiver,
    tmp_path: Path,
    totals: list[str],
) -> None:
    """No operation answers 5xx, every answer conforms to the document, and the server
    accepts exactly the requests the document says are valid."""
    redis = store_client(redis_server.url)
    await redis.flushall()
    await redis.aclose()
    tokens = tuple(StaticToken(token=t, claims=c) for t, c in TOKENS.values())
    daemon = await daemons_on(
        redis_server.url,
        static_tokens=(*tokens, StaticToken(token=FUZZ_TOKEN, claims=FUZZ_CLAIMS)),
        webhook_allowed_hosts=("127.0.0.1",),
        # the document states the widest ceiling a config takes
        subscription_max_ttl_seconds=WEEK_SECONDS,
        local_artifacts_dir=str(tmp_path / "artifacts"),
    )
    before = served()
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{daemon.url}/openapi.json",
        "--checks", "all",
        "--header", f"Authorization: Bearer {FUZZ_TOKEN}",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--generation-database", "none",
        "--request-timeout", "10",
        "--report", "json", "--report-json-path", str(report),
        "--no-color",
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "CODEQ_FUZZ_RECEIVER_PORT": str(receiver.port),
    }
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), DEADLINE_SECONDS)
    finally:
        if proc.returncode is None:  # the deadline passed: the run is ours to end
            proc.kill()
            await proc.wait()
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert report.exists(), text
    run = json.loads(report.read_text())
    answered = served() - before
    failures = {f"{f['code']} {f['title']}": f["count"] for f in run["failures"]}
    errors = {e["title"]: e["count"] for e in run["errors"]}
    by_status = ", ".join(f"{status}: {n}" for status, n in sorted(answered.items()))
    totals.append(
        f"API fuzz (seed {SEED}, {run['running_time']:.0f} s): "
        f"{run['operations']['tested']} operations, {run['test_cases']['generated']} test "
        f"cases, {answered.total()} requests ({by_status}); "
        f"failures by check: {failures or 'none'}; errors: {errors or 'none'}"
    )
    assert answered["202"] and answered["200"], "the fuzz never got past validation"
    assert not any(status.startswith("5") for status in answered), text
    assert run["phases"]["stateful"]["status"] != "skip", text
    assert not failures and not errors, text
