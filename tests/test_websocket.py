"""The WebSocket transport (SPEC §5): worker and producer streams on a real daemon,
with real aiohttp WebSocket clients, and the Python client over both transports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from codeq_transports import websocket
from conftest import TOKENS, Api, RunningDaemon, wait_for

from codeq.client import (
    Client,
    CodeqError,
    JsonObject,
    Producer,
    ProducerStream,
    StreamClosed,
    Worker,
    WorkerStream,
)

pytestmark = pytest.mark.timeout(60)

WORKER_PATH = "/v1/codeq/stream/worker"
PRODUCER_PATH = "/v1/codeq/stream/producer"


def ws_base(running: RunningDaemon) -> str:
    """The daemon's WebSocket address, as its transport reported it."""
    return next(a for a in running.daemon.addresses if a.startswith("ws://"))


@pytest.fixture
async def ws_daemon(start_daemon: Callable[..., Awaitable[RunningDaemon]]) -> RunningDaemon:
    return await start_daemon(
        transports=("http", "websocket"), websocket_port=0, shutdown_grace_seconds=2.0
    )


@pytest.fixture
def ws_api(http: aiohttp.ClientSession, ws_daemon: RunningDaemon) -> Api:
    return Api(http, ws_daemon.url)


class Sock:
    """A raw stream socket with frame helpers."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        message = await self.ws.receive(timeout=timeout)
        assert message.type is aiohttp.WSMsgType.TEXT, (message.type, message.data, message.extra)
        frame: dict[str, Any] = orjson.loads(message.data)
        return frame

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame, which must be of this type."""
        frame = await self.recv(timeout)
        assert frame["type"] == kind, frame
        return frame

    async def tasks(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Tasks frames until `count` tasks came."""
        got: list[dict[str, Any]] = []
        while len(got) < count:
            got += (await self.recv_type("tasks", timeout))["tasks"]
        assert len(got) == count
        return got

    async def ready(self, credits: int, **fields: Any) -> dict[str, Any]:
        await self.send({"type": "ready", "credits": credits, "id": "r", **fields})
        return await self.recv_type("ack")

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Reads until the server closes; (close code, reason)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.ws.receive(timeout=max(0.1, deadline - time.monotonic()))
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return self.ws.close_code, str(message.extra or "")


Opener = Callable[..., Awaitable[Sock]]


@pytest.fixture
async def open_stream(
    http: aiohttp.ClientSession, ws_daemon: RunningDaemon
) -> AsyncIterator[Opener]:
    """Opens a stream as a test identity (header auth; auth=False sends none) and,
    unless expect_hello=False, reads its hello."""
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def open_(
        path: str = WORKER_PATH,
        who: str | None = "worker",
        *,
        expect_hello: bool = True,
    ) -> Sock:
        headers = {"Authorization": f"Bearer {TOKENS[who][0]}"} if who else {}
        ws = await http.ws_connect(ws_base(ws_daemon) + path, headers=headers)
        opened.append(ws)
        sock = Sock(ws)
        if expect_hello:
            sock.hello = await sock.recv_type("hello")
        return sock

    yield open_
    for ws in opened:
        await ws.close()


def completed(task: dict[str, Any]) -> dict[str, Any]:
    return {
        "taskId": task["id"],
        "status": "COMPLETED",
        "result": {"ok": True},
        "leaseToken": task["leaseToken"],
    }


async def create_tasks(api: Api, count: int, command: str = "A") -> list[str]:
    ids = []
    for start in range(0, count, 1000):
        body = {
            "tasks": [{"command": command, "payload": {}} for _ in range(min(1000, count - start))]
        }
        status, answer, _ = await api.call("POST", "/v1/codeq/tasks/batch", "producer", body)
        assert status == 200, answer
        ids += [item["task"]["id"] for item in answer["results"]]
    return ids


async def history_events(api: Api, task_id: str) -> list[str]:
    status, body, _ = await api.call("GET", f"/v1/codeq/tasks/{task_id}/history", "producer")
    assert status == 200, body
    return [entry["event"] for entry in body["history"]]


# ---------------------------------------------------------------- flow control


async def test_credits_bound_unacked_tasks(ws_api: Api, open_stream: Opener) -> None:
    """A worker granting 10 credits never holds more than 10 unacked tasks, across 100."""
    await create_tasks(ws_api, 100)
    sock = await open_stream()
    ack = await sock.ready(10, commands=["A"])
    assert ack["credits"] == 10 and ack["of"] == "ready"
    held: dict[str, dict[str, Any]] = {}
    unsent: dict[str, dict[str, Any]] = {}  # held, and no result sent yet
    done, most, step = 0, 0, 0
    while done < 100:
        frame = await sock.recv()
        if frame["type"] == "tasks":
            for task in frame["tasks"]:
                held[task["id"]] = unsent[task["id"]] = task
            most = max(most, len(held))
            assert len(held) <= 10, f"{len(held)} unacked tasks with 10 credits"
        elif frame["type"] == "results":
            for item in frame["results"]:
                assert "result" in item, item
                held.pop(item["taskId"])
                done += 1
        else:
            raise AssertionError(frame)
        # Ack a few at a time, so pushes come in many sizes.
        step += 1
        batch = list(unsent)[: 1 + step % 4]
        if batch:
            results = [completed(unsent.pop(task_id)) for task_id in batch]
            await sock.send({"type": "results", "results": results})
    assert most == 10


async def test_disconnect_gives_held_tasks_back(
    ws_api: Api, open_stream: Opener, redis: Any
) -> None:
    """Tasks pushed to a socket that drops go back to ready at once, claimable by another."""
    ids = set(await create_tasks(ws_api, 3))
    first = await open_stream()
    await first.ready(3, commands=["A"])
    assert {t["id"] for t in await first.tasks(3)} == ids
    transport = first.ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()  # a dropped connection: no close frame
    second = await open_stream(who="worker2")
    await second.ready(3, commands=["A"])
    again = await second.tasks(3, timeout=CLAIM_WAIT + 10)
    assert {t["id"] for t in again} == ids
    assert all(t["workerId"] == "worker-2" and t["attempts"] == 2 for t in again)
    events = await history_events(ws_api, next(iter(ids)))
    assert events[:4] == ["created", "claimed", "abandoned", "claimed"], events


CLAIM_WAIT = websocket.CLAIM_WAIT_SECONDS


async def test_pause_stops_pushes(ws_api: Api, open_stream: Opener) -> None:
    """After a pause's ack no tasks frame comes (a claim in flight gives its task
    back); a ready opens the stream again."""
    sock = await open_stream()
    await sock.ready(5, commands=["A"])
    await sock.send({"type": "pause", "id": "p1"})
    ack = await sock.recv_type("ack")
    assert (ack["of"], ack["id"], ack["held"]) == ("pause", "p1", 0)
    [task_id] = await create_tasks(ws_api, 1)

    async def given_back() -> bool:
        return "abandoned" in await history_events(ws_api, task_id)

    await wait_for(given_back, timeout=CLAIM_WAIT + 5, message="the in-flight claim's give-back")
    await sock.send({"type": "heartbeat", "taskId": task_id, "id": "probe"})
    # The next frame answers the probe (an error: not leased), not a push.
    probe = await sock.recv()
    assert (probe["type"], probe["id"], probe["code"]) == ("error", "probe", 409), probe
    await sock.ready(1)
    assert [t["id"] for t in await sock.tasks(1)] == [task_id]


# ---------------------------------------------------------------- bad input and auth


async def test_bad_frames_get_error_frames(ws_api: Api, open_stream: Opener) -> None:
    """Malformed JSON, unknown types and bad fields get 400 error frames; the socket works on."""
    sock = await open_stream()
    bad: list[tuple[str, str | None]] = [
        ("{not json", None),
        ("[1, 2]", None),
        ('{"id": 1}', None),
        ('{"type": "launch", "id": "u"}', "launch"),
        ('{"type": "ready", "credits": -1, "id": "c"}', "ready"),
        ('{"type": "ready", "credits": 1, "commands": "A"}', "ready"),
        ('{"type": "heartbeat", "id": 7}', "heartbeat"),
        ('{"type": "results", "results": "x"}', "results"),
        ('{"type": "nack", "taskId": "nope", "id": {"x": 1}}', "nack"),
    ]
    for raw, of in bad:
        await sock.ws.send_str(raw)
        frame = await sock.recv_type("error")
        assert frame["code"] == 400, (raw, frame)
        assert frame.get("of") == of, (raw, frame)
        assert frame["error"], frame
    await sock.send({"type": "heartbeat", "taskId": "x", "id": "again"})
    assert (await sock.recv_type("error"))["id"] == "again"
    [task_id] = await create_tasks(ws_api, 1)
    await sock.ready(1, commands=["A"])
    assert [t["id"] for t in await sock.tasks(1)] == [task_id]


@pytest.mark.parametrize(
    ("path", "who", "first_frame", "code"),
    [
        (WORKER_PATH, None, {"type": "ready", "credits": 1}, 4400),
        (WORKER_PATH, None, "not json", 4400),
        (WORKER_PATH, None, {"type": "auth"}, 4401),
        (WORKER_PATH, None, {"type": "auth", "token": "garbage-token-0000000000"}, 4401),
        (WORKER_PATH, None, {"type": "auth", "token": TOKENS["producer"][0]}, 4403),
        (WORKER_PATH, "producer", None, 4403),
        (PRODUCER_PATH, None, {"type": "auth", "token": "garbage-token-0000000000"}, 4401),
    ],
    ids=[
        "not-auth-first",
        "malformed-first",
        "auth-without-token",
        "garbage-token",
        "producer-token-in-frame",
        "producer-token-in-header",
        "producer-stream-garbage",
    ],
)
async def test_auth_refusals_close_with_code(
    http: aiohttp.ClientSession,
    ws_daemon: RunningDaemon,
    path: str,
    who: str | None,
    first_frame: Any,
    code: int,
) -> None:
    """A stream that does not authenticate is closed with the documented code and a reason."""
    headers = {"Authorization": f"Bearer {TOKENS[who][0]}"} if who else {}
    async with http.ws_connect(ws_base(ws_daemon) + path, headers=headers) as ws:
        if first_frame is not None:
            text = first_frame if isinstance(first_frame, str) else orjson.dumps(first_frame)
            await ws.send_str(text if isinstance(text, str) else text.decode())
        message = await ws.receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.CLOSE, message
        assert ws.close_code == code
        assert message.extra  # the reason names the problem


async def test_garbage_header_token_is_refused(
    http: aiohttp.ClientSession, ws_daemon: RunningDaemon
) -> None:
    """A bad bearer token in the upgrade's Authorization header closes with 4401."""
    headers = {"Authorization": "Bearer garbage-token-0000000000"}
    async with http.ws_connect(ws_base(ws_daemon) + WORKER_PATH, headers=headers) as ws:
        message = await ws.receive(timeout=10)
        assert (message.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 4401)
        assert "invalid token" in message.extra


async def test_no_token_in_time_closes_4400(
    http: aiohttp.ClientSession, ws_daemon: RunningDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no header and no auth frame within the timeout, the stream closes with 4400."""
    monkeypatch.setattr(websocket, "AUTH_TIMEOUT_SECONDS", 0.3)
    async with http.ws_connect(ws_base(ws_daemon) + WORKER_PATH) as ws:
        message = await ws.receive(timeout=10)
        assert (message.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 4400)


async def test_auth_frame_opens_the_stream(open_stream: Opener) -> None:
    """Without a header, a first frame {"type":"auth","token"} authenticates."""
    sock = await open_stream(who=None, expect_hello=False)
    await sock.send({"type": "auth", "token": TOKENS["worker"][0]})
    hello = await sock.recv_type("hello")
    assert (hello["stream"], hello["tenantId"], hello["subject"]) == ("worker", "acme", "worker-1")
    assert hello["maxCredits"] == 1000


# ---------------------------------------------------------------- producer stream


async def test_producer_create_batch(ws_api: Api, open_stream: Opener) -> None:
    """A create frame answers each item in order, with per-item errors and idempotent replays."""
    sock = await open_stream(PRODUCER_PATH, "producer")
    tasks = [
        {"command": "A", "payload": {"n": 1}},
        {"command": "bad command!", "payload": {}},
        "not an object",
        {"command": "A", "payload": {}, "idempotencyKey": "k-1", "priority": 7},
    ]
    await sock.send({"type": "create", "id": "c-1", "tasks": tasks})
    answer = await sock.recv_type("created")
    assert answer["id"] == "c-1"
    first, bad, not_object, keyed = answer["results"]
    assert first["task"]["status"] == "PENDING" and first["task"]["payload"] == '{"n":1}'
    assert (bad["code"], bad["field"], bad["index"]) == (400, "command", 1)
    assert (not_object["code"], not_object["index"]) == (400, 2)
    assert keyed["task"]["priority"] == 7
    await sock.send(
        {
            "type": "create",
            "id": 2,
            "tasks": [{"command": "A", "payload": {}, "idempotencyKey": "k-1"}],
        }
    )
    replay = await sock.recv_type("created")
    assert replay["id"] == 2 and replay["results"][0]["task"]["id"] == keyed["task"]["id"]
    await sock.send({"type": "create", "id": "c-3", "tasks": []})
    refused = await sock.recv_type("error")
    assert (refused["of"], refused["id"], refused["code"], refused["field"]) == (
        "create",
        "c-3",
        400,
        "tasks",
    )
    await sock.send(
        {
            "type": "create",
            "id": "c-4",
            "tasks": [{"command": "A", "payload": {}, "delay_seconds": 1}],
        }
    )
    warned = await sock.recv_type("created")
    assert "tasks[0].delay_seconds" in warned["warning"]
    status, stored = await ws_api.get(first["task"]["id"])
    assert status == 200 and stored["command"] == "A"


# ---------------------------------------------------------------- worker operations


async def test_results_batch_refuses_stale_token_item(ws_api: Api, open_stream: Opener) -> None:
    """In one results frame a stale-token item is refused (409) and the others are recorded."""
    await create_tasks(ws_api, 3)
    sock = await open_stream()
    await sock.ready(3, commands=["A"])
    one, two, three = await sock.tasks(3)
    stale = {**completed(two), "leaseToken": "not-the-token"}
    await sock.send(
        {"type": "results", "id": "b1", "results": [completed(one), stale, completed(three)]}
    )
    answer = await sock.recv_type("results")
    assert answer["id"] == "b1"
    ok1, refused, ok3 = answer["results"]
    assert ok1["result"]["status"] == "COMPLETED" and ok3["result"]["taskId"] == three["id"]
    assert (refused["taskId"], refused["code"]) == (two["id"], 409)
    # The refused task was untouched: its real token still records it.
    await sock.send({"type": "results", "id": "b2", "results": [completed(two)]})
    assert "result" in (await sock.recv_type("results"))["results"][0]
    for task in (one, two, three):
        assert (await ws_api.get(task["id"]))[1]["status"] == "COMPLETED"


async def test_heartbeat_nack_abandon(ws_api: Api, open_stream: Opener) -> None:
    """heartbeat, nack and abandon frames are acked with their ids; a stale one gets an error."""
    ids = await create_tasks(ws_api, 3)
    sock = await open_stream()
    await sock.ready(3, commands=["A"], leaseSeconds=30)
    pushed = {t["id"]: t for t in await sock.tasks(3)}
    a, b, c = (pushed[i] for i in ids)
    await sock.send(
        {
            "type": "heartbeat",
            "id": "h",
            "taskId": a["id"],
            "leaseToken": a["leaseToken"],
            "extendSeconds": 120,
        }
    )
    beat = await sock.recv_type("ack")
    assert (beat["of"], beat["id"], beat["taskId"]) == ("heartbeat", "h", a["id"])
    assert beat["leaseUntil"] > a["leaseUntil"]
    await sock.send(
        {
            "type": "nack",
            "id": "n",
            "taskId": b["id"],
            "leaseToken": b["leaseToken"],
            "delaySeconds": 60,
            "reason": "later",
        }
    )
    nacked = await sock.recv_type("ack")
    assert (nacked["of"], nacked["status"], nacked["delaySeconds"]) == ("nack", "requeued", 60)
    await sock.send(
        {"type": "abandon", "id": "x", "taskId": c["id"], "leaseToken": c["leaseToken"]}
    )
    # The ack, and c straight back on the stream (credits were free), in either order.
    frames = {f["type"]: f for f in [await sock.recv(), await sock.recv()]}
    assert (frames["ack"]["of"], frames["ack"]["status"]) == ("abandon", "requeued")
    assert [t["id"] for t in frames["tasks"]["tasks"]] == [c["id"]]
    await sock.send(
        {"type": "heartbeat", "id": "h2", "taskId": a["id"], "leaseToken": "stale-token"}
    )
    stale = await sock.recv_type("error")
    assert (stale["of"], stale["id"], stale["taskId"], stale["code"]) == (
        "heartbeat",
        "h2",
        a["id"],
        409,
    )
    assert "nacked" in await history_events(ws_api, b["id"])
    task_b = (await ws_api.get(b["id"]))[1]
    assert task_b["status"] == "PENDING" and task_b["lastError"] == "later"


async def test_full_lifecycle_of_1000_tasks_over_streams(
    ws_api: Api, open_stream: Opener, http: aiohttp.ClientSession, ws_daemon: RunningDaemon
) -> None:
    """1000 tasks go producer stream -> worker stream -> results, all COMPLETED."""
    producer = await open_stream(PRODUCER_PATH, "producer")
    worker = await open_stream()
    await worker.ready(250, commands=["A"])
    started = time.perf_counter()
    for n in range(2):
        await producer.send(
            {
                "type": "create",
                "id": n,
                "tasks": [{"command": "A", "payload": {"i": i}} for i in range(500)],
            }
        )
    created = [await producer.recv_type("created") for _ in range(2)]
    assert sum("task" in item for frame in created for item in frame["results"]) == 1000
    done = 0
    while done < 1000:
        frame = await worker.recv()
        if frame["type"] == "tasks":
            await worker.send(
                {"type": "results", "results": [completed(t) for t in frame["tasks"]]}
            )
        else:
            assert frame["type"] == "results", frame
            assert all("result" in item for item in frame["results"]), frame
            done += len(frame["results"])
    took = time.perf_counter() - started
    print(f"1000 lifecycles over streams in {took:.2f}s ({1000 / took:.0f}/s)")
    _, stats, _ = await ws_api.call("GET", "/v1/codeq/admin/queues/A", "admin")
    assert (stats["ready"], stats["inProgress"]) == (0, 0)
    async with http.get(ws_daemon.url + "/metrics") as resp:
        text = await resp.text()
    assert 'codeq_stream_messages_total{direction="in",stream="worker",type="results"}' in text


# ---------------------------------------------------------------- the Python client


@pytest.fixture(params=["http", "websocket"])
async def client_transports(
    request: pytest.FixtureRequest, ws_daemon: RunningDaemon
) -> AsyncIterator[tuple[Any, Any]]:
    """(producer transport, worker transport) of one kind: the HTTP Client, or streams."""
    async with (
        Client(ws_daemon.url, TOKENS["producer"][0]) as producer_http,
        Client(ws_daemon.url, TOKENS["worker"][0]) as worker_http,
    ):
        if request.param == "http":
            yield producer_http, worker_http
            return
        base = ws_base(ws_daemon)
        async with (
            ProducerStream(base, TOKENS["producer"][0], http=producer_http) as producer,
            WorkerStream(base, TOKENS["worker"][0]) as worker,
        ):
            yield producer, worker


async def test_client_round_trip(client_transports: tuple[Any, Any]) -> None:
    """Producer and Worker run the same code over HTTP and over WebSocket streams."""
    producer_transport, worker_transport = client_transports
    producer = Producer(producer_transport)
    one = await producer.create("A", {"n": 0}, priority=3)
    many = await producer.create_many([{"command": "A", "payload": {"n": i}} for i in range(1, 25)])
    bad = await producer.create_many([{"command": "bad command!", "payload": {}}])
    assert isinstance(bad[0], CodeqError) and bad[0].status == 400
    with pytest.raises(CodeqError) as refused:
        await producer.create("no spaces allowed")
    assert refused.value.status == 400
    ids = [one["id"], *(t["id"] for t in many if isinstance(t, dict))]
    assert len(ids) == 25
    seen: list[str] = []

    async def handle(task: JsonObject) -> dict[str, Any]:
        seen.append(task["id"])
        return {"doubled": orjson.loads(task["payload"])["n"] * 2}

    worker = Worker(worker_transport, ["A"], handle, concurrency=4, wait_seconds=1)
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: worker.stats.completed == 25, timeout=20, message="25 completed")
    finally:
        worker.stop()
        stats = await running
    assert sorted(seen) == sorted(ids)
    assert (stats.claimed, stats.completed, stats.lost) == (25, 25, 0)
    done = await producer.result(ids[-1], wait=5)
    assert done["task"]["status"] == "COMPLETED"
    assert done["result"]["result"]["doubled"] == 48


async def test_worker_stream_stops_gracefully(ws_api: Api, ws_daemon: RunningDaemon) -> None:
    """On stop, a stream Worker finishes handlers within the grace period and abandons the rest."""
    quick_id, stuck_id = await create_tasks(ws_api, 2)
    started: dict[str, asyncio.Event] = {quick_id: asyncio.Event(), stuck_id: asyncio.Event()}
    release_quick = asyncio.Event()

    async def handle(task: JsonObject) -> dict[str, Any]:
        started[task["id"]].set()
        if task["id"] == quick_id:
            await release_quick.wait()
            return {"ok": True}
        await asyncio.Event().wait()  # never finishes
        raise AssertionError("unreachable")

    async with WorkerStream(ws_base(ws_daemon), TOKENS["worker"][0]) as stream:
        worker = Worker(stream, ["A"], handle, concurrency=2, grace_seconds=1.0)
        running = asyncio.create_task(worker.run())
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started.values())), 10)
        worker.stop()
        release_quick.set()  # finishes within the grace period
        stats = await asyncio.wait_for(running, 10)
    assert (stats.completed, stats.abandoned) == (1, 1)
    assert (await ws_api.get(quick_id))[1]["status"] == "COMPLETED"
    assert (await ws_api.get(stuck_id))[1]["status"] == "PENDING"
    assert "abandoned" in await history_events(ws_api, stuck_id)


async def test_closed_stream_raises_stream_closed(ws_daemon: RunningDaemon) -> None:
    """A refused stream raises the HTTP-like status; calls on a closed one raise StreamClosed."""
    with pytest.raises(StreamClosed) as refused:
        async with WorkerStream(ws_base(ws_daemon), TOKENS["producer"][0]):
            pass
    assert (refused.value.status, refused.value.code) == (403, 4403)
    stream = WorkerStream(ws_base(ws_daemon), TOKENS["worker"][0])
    await stream.connect()
    await stream.close()
    with pytest.raises(StreamClosed):
        await stream.heartbeat("x", None)


# ---------------------------------------------------------------- shutdown


async def test_daemon_stop_closes_streams_with_1001(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    ws_daemon: RunningDaemon,
    open_stream: Opener,
    http: aiohttp.ClientSession,
) -> None:
    """Daemon.stop() stops pushes, lets results in during the grace period, closes with
    1001, and gives back what the worker still held."""
    other = Api(http, (await start_daemon()).url)  # reads the store after the stop
    acked_id, held_id = await create_tasks(other, 2)
    sock = await open_stream()
    await sock.ready(2, commands=["A"])
    by_id = {t["id"]: t for t in await sock.tasks(2)}
    stopping = asyncio.create_task(ws_daemon.daemon.stop())
    await wait_for(lambda: ws_daemon.daemon.service.draining, message="draining")
    await sock.send({"type": "results", "id": "last", "results": [completed(by_id[acked_id])]})
    answer = await sock.recv_type("results")
    assert "result" in answer["results"][0]
    code, reason = await sock.closed(timeout=15)
    assert code == 1001 and "shutting down" in reason
    await asyncio.wait_for(stopping, 15)
    assert (await other.get(acked_id))[1]["status"] == "COMPLETED"
    held = (await other.get(held_id))[1]
    assert held["status"] == "PENDING"
    assert "abandoned" in await history_events(other, held_id)
