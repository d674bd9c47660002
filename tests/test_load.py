"""Load: 1,000 concurrent HTTP clients, each on its own connection, create, claim and
complete tasks against one `codeq serve` for a bounded run; every answer is one the
API promises (no 5xx, no dropped connection) and every task accepted is completed
exactly once. The figures are printed at the end of the run, not asserted on."""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import TOKENS, Api, ServeProcess
from figures import report

TASKS = "/v1/codeq/tasks"
CLIENTS = 1000
ROUNDS = 2  # create, claim, result per round: about 6,000 requests in all
COMMAND = "load"
SPARE_FILES = 512  # descriptors beyond one per client: store pool, logs, listeners


@dataclass
class Figures:
    """What one run did: every request's latency, and every answer that was not one
    the API promises for it."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    created: list[str] = field(default_factory=list)
    completed: Counter[str] = field(default_factory=Counter)

    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


@pytest.fixture
def open_files() -> Iterator[int]:
    """Raises this process's soft RLIMIT_NOFILE to the hard limit when one descriptor
    per client would not fit (the daemon child inherits it); restores it afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CLIENTS + SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted} for {CLIENTS} clients")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Client:
    """One client: its own session and connection, as a separate process would have."""

    def __init__(self, base: str, figures: Figures) -> None:
        self.base = base
        self.figures = figures
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def call(
        self, route: str, path: str, who: str, body: Any, expected: tuple[int, ...]
    ) -> tuple[int, Any]:
        """POSTs and records the latency; an answer outside `expected` (or none at all)
        is an error. Returns (status, JSON body or None); status 0 when no answer came."""
        figures = self.figures
        figures.in_flight += 1
        figures.peak_in_flight = max(figures.peak_in_flight, figures.in_flight)
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {TOKENS[who][0]}"}
        try:
            async with self.session.post(self.base + path, json=body, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            figures.errors[f"{route}: {type(exc).__name__}: {exc}"] += 1
            return 0, None
        finally:
            figures.in_flight -= 1
            figures.latencies.append(time.monotonic() - started)
        if status not in expected:
            figures.errors[f"{route}: {status} {text[:120]}"] += 1
            return status, None
        return status, json.loads(text) if text else None

    async def run(self, gate: asyncio.Event) -> None:
        """ROUNDS of: create a task, claim one (any client's), complete it."""
        await gate.wait()
        for _ in range(ROUNDS):
            status, task = await self.call(
                "create", TASKS, "producer", {"command": COMMAND, "payload": {"n": 1}}, (202,)
            )
            if status == 202:
                self.figures.created.append(task["id"])
            body = {"commands": [COMMAND], "leaseSeconds": 120}
            status, claimed = await self.call("claim", f"{TASKS}/claim", "worker", body, (200, 204))
            if status != 200:
                continue
            result = {"status": "COMPLETED", "result": {}, "leaseToken": claimed["leaseToken"]}
            path = f"{TASKS}/{claimed['id']}/result"
            status, _ = await self.call("result", path, "worker", result, (200,))
            if status == 200:
                self.figures.completed[claimed["id"]] += 1

    async def close(self) -> None:
        await self.session.close()


async def drain(api: Api, figures: Figures) -> None:
    """Claims and completes what the clients left ready (their claims may have come
    before the creates they raced), batch by batch."""
    while True:
        body = {"commands": [COMMAND], "leaseSeconds": 120, "count": 1000}
        status, answer, _ = await api.call("POST", f"{TASKS}/claim/batch", "worker", body)
        if status == 204:
            return
        assert status == 200, answer
        results = [
            {"taskId": t["id"], "status": "COMPLETED", "result": {}, "leaseToken": t["leaseToken"]}
            for t in answer["tasks"]
        ]
        status, answer, _ = await api.call(
            "POST", f"{TASKS}/batch/results", "worker", {"results": results}
        )
        assert status == 200, answer
        for item in answer["results"]:
            assert "result" in item, item
            figures.completed[item["taskId"]] += 1


async def test_1000_concurrent_clients_get_no_errors_and_lose_no_task(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    tokens_file: Path,
    open_files: int,
    request: pytest.FixtureRequest,
) -> None:
    """1,000 clients at once on their own connections: every create is 202, every claim
    200 or 204, every result 200; every accepted task ends completed exactly once."""
    child = serve("--config", str(tokens_file), REDIS_ADDR=store_url, LOG_LEVEL="warning")
    await child.ready(http)
    figures = Figures()
    clients = [Client(child.url, figures) for _ in range(CLIENTS)]
    gate = asyncio.Event()
    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            for client in clients:
                group.create_task(client.run(gate))
            gate.set()
    finally:
        took = time.monotonic() - started
        for client in clients:
            await client.close()
    requests = len(figures.latencies)
    store = request.node.callspec.params["store_server"]
    errors = sum(figures.errors.values())
    report(
        request.config,
        "load",
        f"{store}: {CLIENTS} clients (peak {figures.peak_in_flight} requests in flight, "
        f"RLIMIT_NOFILE {open_files}), {requests} requests in {took:.1f} s, {errors} errors, "
        f"p99 {figures.p99_ms():.0f} ms, {len(figures.created)} tasks",
    )
    assert not figures.errors, figures.errors.most_common(5)
    assert figures.peak_in_flight == CLIENTS, "the clients never all had a request in flight"

    api = Api(http, child.url)
    await drain(api, figures)
    assert sorted(figures.completed) == sorted(figures.created), "a task was lost or invented"
    assert set(figures.completed.values()) == {1}, "a task was completed twice"
    status, stats, _ = await api.call("GET", f"/v1/codeq/admin/queues/{COMMAND}", "admin")
    assert status == 200, stats
    assert (stats["ready"], stats["delayed"], stats["inProgress"], stats["dlq"]) == (0, 0, 0, 0)
