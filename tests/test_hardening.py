"""Hardening (issue 11): load past the pool is served, a fault in one item never
stops an actor, hostile bytes get a 4xx, a full store is a 503 that says so.
Every case runs against the real stores."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from conftest import Api, RunningDaemon

TASKS = "/v1/codeq/tasks"
CLIENTS = 300  # concurrent requests, far past the pool below


async def _at_once(calls: list[Awaitable[tuple[int, Any, Any]]]) -> Counter[int]:
    return Counter(status for status, _, _ in await asyncio.gather(*calls))


async def test_operations_past_the_pool_wait_for_a_connection(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
) -> None:
    """With 4 store connections, 300 concurrent creates and then 300 concurrent
    claims are all served (they wait for a connection; before, every operation past
    the pool got 503 'Too many connections' at once)."""
    daemon = await start_daemon(store_max_connections=4)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        api = Api(http, daemon.url)
        body = {"command": "LOAD", "payload": {"n": 1}}
        created = await _at_once(
            [api.call("POST", TASKS, "producer", body) for _ in range(CLIENTS)]
        )
        assert created == {202: CLIENTS}, created
        claim = {"commands": ["LOAD"], "waitSeconds": 0}
        claimed = await _at_once(
            [api.call("POST", f"{TASKS}/claim", "worker", claim) for _ in range(CLIENTS)]
        )
        assert claimed == {200: CLIENTS}, claimed
