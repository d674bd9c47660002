"""A store that hangs (SIGSTOP) bounds every request by the store timeout: a 503 in
time, never a request stuck for good; service comes back when the store does."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from conftest import Api, RedisProcess, RunningDaemon, wait_for


async def test_hung_store_gives_503_within_the_store_timeout(
    own_store: RedisProcess,
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    http: Any,
) -> None:
    """With the store frozen, create, claim and get answer 503 after about the store
    timeout; once it thaws, the same calls succeed on the same daemon."""
    daemon = await start_daemon(redis_addr=own_store.url, store_timeout_seconds=0.5)
    api = Api(http, daemon.url)
    task = await api.create("HANG")
    os.kill(own_store.proc.pid, signal.SIGSTOP)
    try:
        for method, path, who, body in (
            ("POST", "/v1/codeq/tasks", "producer", {"command": "HANG"}),
            ("POST", "/v1/codeq/tasks/claim", "worker", {"commands": ["HANG"]}),
            ("GET", f"/v1/codeq/tasks/{task['id']}", "producer", None),
        ):
            started = time.monotonic()
            status, answer, _ = await api.call(method, path, who, body)
            elapsed = time.monotonic() - started
            assert status == 503, (path, answer)
            assert "0.5s" in answer["error"], answer
            assert elapsed < 2.0, f"{path} took {elapsed:.2f}s"
    finally:
        os.kill(own_store.proc.pid, signal.SIGCONT)

    async def serves_again() -> bool:
        status, _, _ = await api.call("GET", f"/v1/codeq/tasks/{task['id']}", "producer")
        return status == 200

    await wait_for(serves_again, timeout=10, message="the store back")
    # (a call that timed out may still have run once the store thawed: a timeout is
    # never retried, and a task is never lost -- the first one is still claimable)
    assert await api.claim(commands=["HANG"]) is not None
