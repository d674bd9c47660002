"""Per-key concurrency limits and fair claiming (issue 15, parts 2 and 3): a task's
concurrencyKey, a queue's maxInFlightPerKey and fairness, on both stores, through
single and batch claims and the worker stream."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from conftest import TOKENS, Api, RunningDaemon, wait_for
from redis.asyncio import Redis

from codeq.store import keys
from codeq.store.scripts import source

pytestmark = pytest.mark.timeout(60)

TASKS = "/v1/codeq/tasks"
ADMIN = "/v1/codeq/admin"
TAG = keys.tenant_tag("acme")


async def settings(api: Api, command: str, who: str = "admin", **body: Any) -> tuple[int, Any]:
    status, data, _ = await api.call("POST", f"{ADMIN}/queues/{command}/settings", who, body)
    return status, data


async def limit(api: Api, command: str, most: int, fairness: str = "none") -> None:
    status, data = await settings(api, command, maxInFlightPerKey=most, fairness=fairness)
    assert status == 200, data


async def create_keyed(
    api: Api, command: str, key: str | None, count: int, **fields: Any
) -> list[str]:
    """Creates `count` tasks of one key (None: unkeyed) in one batch; their IDs in order."""
    task: dict[str, Any] = {"command": command, "payload": {}, **fields}
    if key is not None:
        task["concurrencyKey"] = key
    status, body, _ = await api.call(
        "POST", f"{TASKS}/batch", "producer", {"tasks": [task] * count}
    )
    assert status == 200, body
    return [item["task"]["id"] for item in body["results"]]


async def claim_batch(api: Api, command: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    body = {"commands": [command], "count": count, **fields}
    status, data, _ = await api.call("POST", f"{TASKS}/claim/batch", "worker", body)
    if status == 204:  # a long poll that found nothing
        return []
    assert status == 200, data
    tasks: list[dict[str, Any]] = data["tasks"]
    return tasks


async def claim(api: Api, command: str, **fields: Any) -> dict[str, Any] | None:
    task: dict[str, Any] | None = await api.claim(commands=[command], **fields)
    return task


async def complete(api: Api, task: dict[str, Any]) -> None:
    status, data = await api.result(task["id"], leaseToken=task["leaseToken"])
    assert status == 200, data


async def in_flight(redis: Redis, command: str) -> dict[str, int]:
    counts: dict[str, str] = await redis.hgetall(keys.key_in_flight(TAG, command))  # type: ignore[misc]
    return {k: int(v) for k, v in counts.items()}


# ------------------------------------------------------------ layout and settings


async def test_lua_key_names_match_python(redis: Redis) -> None:
    """lib.lua builds the concurrency-key names as codeq/store/keys.py does."""
    lib = source("create").split("-- create:")[0]
    body = (
        "return {k_kready('A:b', 3, 'k.1'), k_rotation('A:b', 3), k_inflight('A'),"
        " k_blocked('A'), k_kdepth('A'), k_qsettings('A')}"
    )
    names = await redis.eval(lib + "\n" + body, 1, keys.prefix(TAG))  # type: ignore[misc]
    assert names == [
        keys.keyed_ready(TAG, "A:b", 3, "k.1"),
        keys.key_rotation(TAG, "A:b", 3),
        keys.key_in_flight(TAG, "A"),
        keys.blocked_keys(TAG, "A"),
        keys.keyed_depth(TAG, "A"),
        keys.queue_settings(TAG, "A"),
    ]


async def test_settings_are_read_set_and_checked(api: Api) -> None:
    """A queue's settings default to no limit, oldest first; an admin sets each field
    alone; bad values and non-admins are refused; a task shows its concurrencyKey."""
    status, data, _ = await api.call("GET", f"{ADMIN}/queues/S/settings", "admin")
    assert (status, data) == (200, {"command": "S", "maxInFlightPerKey": 0, "fairness": "none"})
    assert (await settings(api, "S", maxInFlightPerKey=3))[1]["maxInFlightPerKey"] == 3
    status, data = await settings(api, "S", fairness="round_robin")
    assert data == {"command": "S", "maxInFlightPerKey": 3, "fairness": "round_robin"}
    status, data, _ = await api.call("GET", f"{ADMIN}/queues/S/settings", "admin")
    assert data == {"command": "S", "maxInFlightPerKey": 3, "fairness": "round_robin"}
    assert (await settings(api, "S", fairness="lottery"))[0] == 400
    assert (await settings(api, "S", maxInFlightPerKey=-1))[0] == 400
    assert (await settings(api, "S", maxInFlightPerKey=1.5))[0] == 400
    assert (await settings(api, "S", who="worker", maxInFlightPerKey=1))[0] == 403
    status, data = await settings(api, "S", maxInFlightPerKey=0, fairness="none")
    assert data == {"command": "S", "maxInFlightPerKey": 0, "fairness": "none"}
    for bad in ("a:b", "a b", "x" * 129, 7):
        status, body, _ = await api.call(
            "POST", TASKS, "producer", {"command": "S", "payload": {}, "concurrencyKey": bad}
        )
        assert status == 400 and body["field"] == "concurrencyKey", (bad, body)
    created = await api.create("S", concurrencyKey="cust-1@x.y")
    assert created["concurrencyKey"] == "cust-1@x.y"
    assert (await api.get(created["id"]))[1]["concurrencyKey"] == "cust-1@x.y"
    assert "concurrencyKey" not in await api.create("S")


# ------------------------------------------------------------ the limit


async def test_no_head_of_line_blocking(api: Api, redis: Redis) -> None:
    """A full key's many tasks stall neither other keys nor unkeyed tasks behind them."""
    await limit(api, "H", 1)
    big = await create_keyed(api, "H", "big", 50)
    [small] = await create_keyed(api, "H", "small", 1)
    [plain] = await create_keyed(api, "H", None, 1)
    got = [await claim(api, "H") for _ in range(3)]
    assert [t["id"] for t in got if t] == [big[0], small, plain]
    assert await claim(api, "H") is None  # big is full: its 49 others wait
    assert await in_flight(redis, "H") == {"big": 1, "small": 1}
    _, stats, _ = await api.call("GET", f"{ADMIN}/queues/H", "admin")
    assert (stats["ready"], stats["inProgress"]) == (49, 3), stats
    big_task = next(t for t in got if t and t["id"] == big[0])
    await complete(api, big_task)
    nxt = await claim(api, "H")
    assert nxt is not None and nxt["id"] == big[1]


async def test_limit_holds_under_50_concurrent_claimers(api: Api, redis: Redis) -> None:
    """50 workers claiming (single and batch) at once never hold more than the limit of
    one key; every task is done in the end."""
    await limit(api, "L", 2)
    ids: set[str] = set()
    for key in ("a", "b", "c"):
        ids |= set(await create_keyed(api, "L", key, 12))
    held: Counter[str] = Counter()  # claimed and no result sent yet: a lower bound
    most: Counter[str] = Counter()
    done: set[str] = set()

    async def worker(n: int) -> None:
        while len(done) < len(ids):
            if n % 2:
                tasks = await claim_batch(api, "L", 3, waitSeconds=0.2)
            else:
                task = await claim(api, "L", waitSeconds=0.2)
                tasks = [task] if task else []
            for task in tasks:
                key = task["concurrencyKey"]
                held[key] += 1
                most[key] = max(most[key], held[key])
                assert held[key] <= 2, f"{held[key]} tasks of {key} in progress"
            await asyncio.sleep(0)  # let other claimers run while these are held
            for task in tasks:
                held[task["concurrencyKey"]] -= 1
                await complete(api, task)
                done.add(task["id"])

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(50))), 45)
    assert done == ids
    assert await in_flight(redis, "L") == {}
    assert set(most) == {"a", "b", "c"} and max(most.values()) <= 2


async def test_batch_claim_respects_the_limit(api: Api, redis: Redis) -> None:
    """One batch claim takes at most the limit of each key, whatever its count."""
    await limit(api, "B", 2)
    await create_keyed(api, "B", "x", 5)
    await create_keyed(api, "B", "y", 5)
    await create_keyed(api, "B", None, 2)
    tasks = await claim_batch(api, "B", 20)
    assert Counter(t.get("concurrencyKey") for t in tasks) == {"x": 2, "y": 2, None: 2}
    assert await claim_batch(api, "B", 20) == []
    assert await in_flight(redis, "B") == {"x": 2, "y": 2}


async def test_raising_the_limit_frees_blocked_keys(api: Api) -> None:
    """Blocked keys are claimable at once after the limit is raised or lifted."""
    await limit(api, "R", 1)
    await create_keyed(api, "R", "k", 4)
    assert len(await claim_batch(api, "R", 4)) == 1
    await limit(api, "R", 2)
    assert len(await claim_batch(api, "R", 4)) == 1
    await limit(api, "R", 0)
    assert len(await claim_batch(api, "R", 4)) == 2


async def test_lowering_the_limit_applies_to_the_next_claims(api: Api) -> None:
    await limit(api, "W", 5)
    await create_keyed(api, "W", "k", 6)
    assert len(await claim_batch(api, "W", 2)) == 2
    await limit(api, "W", 2)
    assert await claim_batch(api, "W", 4) == []
    await limit(api, "W", 3)
    assert len(await claim_batch(api, "W", 4)) == 1


async def test_a_freed_slot_wakes_a_waiting_claim(api: Api, daemon: RunningDaemon) -> None:
    """A long poll waiting while every key is full gets the key's next task as soon as a
    lease of it ends."""
    await limit(api, "P", 1)
    first, second = await create_keyed(api, "P", "k", 2)
    held = await claim(api, "P")
    assert held is not None and held["id"] == first
    waiting = asyncio.create_task(claim(api, "P", waitSeconds=10))
    scheduler = daemon.daemon.service.scheduler  # type: ignore[union-attr]
    await wait_for(lambda: scheduler.waiting() == 1, message="the claim waiting")
    await complete(api, held)
    woke = await asyncio.wait_for(waiting, 5)
    assert woke is not None and woke["id"] == second


# ------------------------------------------------------------ every end of a lease


async def _end_by_result(api: Api, task: dict[str, Any]) -> None:
    await complete(api, task)


async def _end_by_failed_result(api: Api, task: dict[str, Any]) -> None:
    status, data = await api.result(
        task["id"], status="FAILED", error="boom", leaseToken=task["leaseToken"]
    )
    assert status == 200, data


async def _end_by_nack(api: Api, task: dict[str, Any]) -> None:
    body = {"delaySeconds": 0, "leaseToken": task["leaseToken"]}
    status, data, _ = await api.call("POST", f"{TASKS}/{task['id']}/nack", "worker", body)
    assert status == 200, data


async def _end_by_abandon(api: Api, task: dict[str, Any]) -> None:
    body = {"leaseToken": task["leaseToken"]}
    status, data, _ = await api.call("POST", f"{TASKS}/{task['id']}/abandon", "worker", body)
    assert status == 200, data


async def _end_by_cancel(api: Api, task: dict[str, Any]) -> None:
    status, data, _ = await api.call("POST", f"{TASKS}/{task['id']}/cancel", "producer", {})
    assert (status, data["status"]) == (202, "cancel_requested"), data
    await _end_by_abandon(api, task)  # a cancel-requested task ends CANCELLED here


async def _end_by_admin_requeue(api: Api, task: dict[str, Any]) -> None:
    status, data, _ = await api.call("POST", f"{ADMIN}/tasks/{task['id']}/requeue", "admin", {})
    assert status == 200, data


async def _end_by_admin_fail(api: Api, task: dict[str, Any]) -> None:
    status, data, _ = await api.call("POST", f"{ADMIN}/tasks/{task['id']}/fail", "admin", {})
    assert status == 200, data


async def _end_by_expiry(api: Api, task: dict[str, Any]) -> None:
    """Nothing: the lease (1 s) runs out and the reaper ends it."""


ENDINGS: dict[str, Callable[[Api, dict[str, Any]], Awaitable[None]]] = {
    "result": _end_by_result,
    "failed_result": _end_by_failed_result,
    "nack": _end_by_nack,
    "abandon": _end_by_abandon,
    "cancel": _end_by_cancel,
    "admin_requeue": _end_by_admin_requeue,
    "admin_fail": _end_by_admin_fail,
    "lease_expiry": _end_by_expiry,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_every_end_of_a_lease_frees_the_slot(api: Api, redis: Redis, ending: str) -> None:
    """However a lease of a full key ends, the key's next task is claimable."""
    command = f"E{ending}"
    await limit(api, command, 1)
    first, second = await create_keyed(api, command, "k", 2)
    held = await claim(api, command, leaseSeconds=1 if ending == "lease_expiry" else 60)
    assert held is not None and held["id"] == first
    assert await claim(api, command) is None
    await ENDINGS[ending](api, held)
    nxt = await wait_for(lambda: claim(api, command), timeout=5, message="the freed slot")
    # the ended task went back to the front (abandon, requeue) or out; else the second
    assert nxt["id"] in ({first, second} if ending in ("abandon", "admin_requeue") else {second})
    assert await in_flight(redis, command) == {"k": 1}
    assert await claim(api, command) is None  # and the slot is taken again


async def test_cancel_and_purge_of_ready_keyed_tasks(api: Api, redis: Redis) -> None:
    """A cancelled ready keyed task is never handed out; purge empties the keyed lists
    (and the depth) too."""
    a1, a2 = await create_keyed(api, "C", "a", 2)
    status, data, _ = await api.call("POST", f"{TASKS}/{a1}/cancel", "producer", {})
    assert status == 200 and data["status"] == "CANCELLED", data
    tasks = await claim_batch(api, "C", 5)
    assert [t["id"] for t in tasks] == [a2]
    await create_keyed(api, "C", "a", 3)
    await create_keyed(api, "C", "b", 3)
    await limit(api, "C", 1)  # a is full (a2 held): blocked, yet purged
    status, data, _ = await api.call("POST", f"{ADMIN}/queues/C/purge", "admin", {})
    assert status == 200 and data["purged"] == 6, data
    status, stats, _ = await api.call("GET", f"{ADMIN}/queues/C", "admin")
    assert stats["ready"] == 0, stats
    assert await claim_batch(api, "C", 5) == []


# ------------------------------------------------------------ fairness


async def test_round_robin_rotates_across_keys(api: Api) -> None:
    """With fairness round_robin a key's backlog takes one turn per round; without it,
    oldest first; a higher priority goes first either way."""
    for command, fairness in (("F1", "round_robin"), ("F0", "none")):
        await limit(api, command, 0, fairness)
        big = await create_keyed(api, command, "k0", 5)
        smalls = [(await create_keyed(api, command, f"k{n}", 1))[0] for n in (1, 2, 3)]
        [urgent] = await create_keyed(api, command, "k9", 1, priority=5)
        order = [t["id"] for t in await claim_batch(api, command, 20)]
        if fairness == "round_robin":
            assert order == [urgent, big[0], *smalls, *big[1:]], command
        else:
            assert order == [urgent, *big, *smalls], command


async def test_round_robin_with_a_limit(api: Api) -> None:
    """Fairness and a limit together: each round takes one task of each free key."""
    await limit(api, "FL", 2, "round_robin")
    a = await create_keyed(api, "FL", "a", 4)
    b = await create_keyed(api, "FL", "b", 4)
    order = [t["id"] for t in await claim_batch(api, "FL", 10)]
    assert order == [a[0], b[0], a[1], b[1]]


# ------------------------------------------------------------ the stream


@pytest.fixture
async def ws_daemon(start_daemon: Callable[..., Awaitable[RunningDaemon]]) -> RunningDaemon:
    return await start_daemon(
        transports=("http", "websocket"), websocket_port=0, shutdown_grace_seconds=2.0
    )


async def test_stream_respects_the_limit(
    http: aiohttp.ClientSession, ws_daemon: RunningDaemon, redis: Redis
) -> None:
    """A worker stream with credits for all is pushed only the limit of a key; each
    result lets the next one through."""
    api = Api(http, ws_daemon.url)
    await limit(api, "WS", 2)
    ids = await create_keyed(api, "WS", "k", 5)
    url = next(a for a in ws_daemon.daemon.addresses if a.startswith("ws://"))
    headers = {"Authorization": f"Bearer {TOKENS['worker'][0]}"}
    async with http.ws_connect(url + "/v1/codeq/stream/worker", headers=headers) as ws:

        async def recv() -> dict[str, Any]:
            message = await ws.receive(timeout=10)
            frame: dict[str, Any] = orjson.loads(message.data)
            return frame

        async def send(frame: dict[str, Any]) -> None:
            await ws.send_str(orjson.dumps(frame).decode())

        assert (await recv())["type"] == "hello"
        await send({"type": "ready", "credits": 10, "id": "r", "commands": ["WS"]})
        got: list[dict[str, Any]] = []
        while len(got) < 2:
            frame = await recv()
            if frame["type"] == "tasks":
                got += frame["tasks"]
        assert [t["id"] for t in got] == ids[:2]
        assert await in_flight(redis, "WS") == {"k": 2}
        _, stats, _ = await api.call("GET", f"{ADMIN}/queues/WS", "admin")
        assert (stats["ready"], stats["inProgress"]) == (3, 2), stats
        done = 0
        while done < 5:
            task = got[done]
            result = {"taskId": task["id"], "status": "COMPLETED", "result": {}}
            await send(
                {"type": "results", "results": [{**result, "leaseToken": task["leaseToken"]}]}
            )
            done += 1
            while len(got) < min(5, done + 2):
                frame = await recv()
                if frame["type"] == "tasks":
                    got += frame["tasks"]
            assert (await in_flight(redis, "WS")).get("k", 0) <= 2
        assert [t["id"] for t in got] == ids
