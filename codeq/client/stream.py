"""The WebSocket transport of the client (SPEC §5): long-lived streams that slot in
where the HTTP `Client` goes, with the same `Producer` and `Worker` API::

    async with ProducerStream("ws://127.0.0.1:8081", token, http=client) as stream:
        task = await Producer(stream).create("RENDER", {"jobId": "j-1"})

    async with WorkerStream("ws://127.0.0.1:8081", token) as stream:
        await Worker(stream, ["RENDER"], render, concurrency=8).run()

A `Worker` on a `WorkerStream` grants the stream credits = concurrency: the server
pushes tasks as they come (never more unacked than that), results are batched into
one frame per `flush_seconds` (or per `flush_size` results), and a stop pauses the
stream and gives back tasks pushed but not started. The frames are the README's
"WebSocket streams". A stream does not reconnect: once it closes, calls raise
`StreamClosed`; open a new stream (the server gave the old one's tasks back).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import aiohttp
import orjson

from codeq.client.api import CodeqError, JsonObject
from codeq.client.connections import GaveUp, unless
from codeq.client.http import USER_AGENT, Client

log = logging.getLogger("codeq.client.stream")

MAX_BATCH = 1000  # items per create or results frame, as the server allows
MAX_FRAME_BYTES = 512 * 1024  # below the server's maxBodyBytes default (1 MiB)
# Close codes of the server's refusals, as the HTTP status a Client would raise.
_CLOSE_STATUS = {4400: 400, 4401: 401, 4403: 403, 1013: 503}


class StreamClosed(CodeqError):
    """The stream is closed (by the server, e.g. 1001 at shutdown, or by us). Not
    retryable on this stream: open a new one."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(_CLOSE_STATUS.get(code or 0, 0), f"stream closed ({code}): {reason}")
        self.code = code

    @property
    def retryable(self) -> bool:
        return False


def _drop_none(body: Mapping[str, Any]) -> JsonObject:
    return {k: v for k, v in body.items() if v is not None}


def _refusal(frame: JsonObject) -> CodeqError:
    return CodeqError(int(frame.get("code") or 0), str(frame.get("error")), frame)


class _Stream:
    """One socket: opened with the bearer token, read by one owned reader task that
    matches answers to requests by their "id"."""

    path: ClassVar[str]

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.hello: JsonObject = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[JsonObject]] = {}
        self._closed: StreamClosed | None = None

    def __repr__(self) -> str:  # never shows the token
        return f"{type(self).__name__}({self.url!r})"

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Opens the socket and waits for the server's hello; a refusal raises
        CodeqError with the matching HTTP status (401, 403, 400)."""
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        try:
            self._ws = await self._session.ws_connect(
                self.url + self.path,
                headers={"Authorization": f"Bearer {self._token}"},
                heartbeat=20.0,
                max_msg_size=0,
            )
            first = await self._ws.receive(timeout=self.timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._session.close()
            raise CodeqError(0, f"cannot open {self.url}{self.path}: {exc}") from exc
        if first.type is not aiohttp.WSMsgType.TEXT:
            code, reason = self._ws.close_code, first.extra or "closed before hello"
            await self._session.close()
            raise StreamClosed(code, str(reason))
        self.hello = orjson.loads(first.data)
        self._reader = asyncio.create_task(self._read(), name=f"codeq-stream-{self.path}")

    async def close(self) -> None:
        """Closes the socket; calls still waiting raise StreamClosed."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.wait({self._reader})
            self._reader = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ the wire

    async def _send(self, frame: JsonObject | bytes) -> None:
        if self._closed is not None:
            raise self._closed
        if self._ws is None:
            raise RuntimeError("stream is not open: use `async with` or connect()")
        data = frame if isinstance(frame, bytes) else orjson.dumps(frame)
        try:
            await self._ws.send_str(data.decode())
        except ConnectionResetError as exc:
            raise StreamClosed(self._ws.close_code, str(exc)) from exc

    def _expect(self) -> tuple[int, asyncio.Future[JsonObject]]:
        """A new correlation id and the future its answer resolves."""
        correlation = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        return correlation, future

    async def _call(self, frame: JsonObject) -> JsonObject:
        """Sends a frame with a new id and waits for its answer (an error frame raises)."""
        correlation, future = self._expect()
        try:
            await self._send({**frame, "id": correlation})
            async with asyncio.timeout(self.timeout):
                return await future
        finally:
            self._waiting.pop(correlation, None)

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    self._dispatch(orjson.loads(message.data))
        finally:
            reason = self._ws.exception() or (
                "closed by the server" if self._ws.close_code != 1000 else "closed"
            )
            self._closed = StreamClosed(self._ws.close_code, str(reason))
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(self._closed)
            self._waiting.clear()
            self._on_closed()

    def _dispatch(self, frame: JsonObject) -> None:
        future = self._waiting.pop(frame.get("id"), None)  # type: ignore[arg-type]
        if future is None or future.done():
            if frame.get("type") == "error":
                log.warning("codeq stream: %s (%s)", frame.get("error"), frame.get("code"))
            return
        if frame.get("warning"):
            log.warning("codeq: %s", frame["warning"])
        if frame.get("type") == "error":
            future.set_exception(_refusal(frame))
        else:
            future.set_result(frame)

    def _on_closed(self) -> None:
        """Subclasses wake what waits on pushed frames."""


class WorkerStream(_Stream):
    """A worker's stream: a `WorkerTransport` whose claims are served from the tasks
    the server pushed. Without a `Worker`, `claim()` grants `credits` on first use."""

    path = "/v1/codeq/stream/worker"

    def __init__(
        self,
        url: str,
        token: str,
        *,
        credits: int = 1,
        flush_seconds: float = 0.005,
        flush_size: int = 100,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(url, token, timeout=timeout)
        self.credits = credits
        self.flush_seconds = flush_seconds
        self.flush_size = min(flush_size, MAX_BATCH)
        self._subscribed = False
        self._pushed: deque[JsonObject] = deque()
        self._arrived = asyncio.Event()
        self._pending: list[tuple[JsonObject, asyncio.Future[JsonObject]]] = []
        self._has_pending = asyncio.Event()
        self._full = asyncio.Event()
        self._batches: dict[int, list[asyncio.Future[JsonObject]]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._refused: CodeqError | None = None  # the server could not serve the ready

    async def connect(self) -> None:
        await super().connect()
        self._flusher = asyncio.create_task(self._flush_loop(), name="codeq-stream-flusher")

    async def close(self) -> None:
        """Sends the results still pending, then closes."""
        if self._flusher is not None:
            if self._pending and self._closed is None:
                self._full.set()
                waiting = [f for _, f in self._pending]
                await asyncio.wait(waiting, timeout=self.timeout)
            self._flusher.cancel()
            await asyncio.wait({self._flusher})
            self._flusher = None
        await super().close()

    # ------------------------------------------------------------ credits

    async def subscribe(
        self, commands: Sequence[str], *, lease_seconds: int | None, credits: int
    ) -> JsonObject:
        """Sends `ready`: the commands, the lease, and `credits` more tasks the worker
        can hold; → the ack (`credits`: the window now)."""
        frame = _drop_none(
            {
                "type": "ready",
                "commands": list(commands),
                "leaseSeconds": lease_seconds,
                "credits": credits,
            }
        )
        self._subscribed = True
        return await self._call(frame)

    async def unsubscribe(self) -> None:
        """No more pushes: pauses the stream (once acked, no task follows) and gives
        back the tasks pushed but not claimed yet."""
        await self._call({"type": "pause"})
        self._subscribed = False
        while self._pushed:
            task = self._pushed.popleft()
            try:
                await self.abandon(task["id"], task.get("leaseToken"))
            except CodeqError as exc:
                log.warning("%s: could not give back: %s", task["id"], exc)

    # ------------------------------------------------------------ WorkerTransport

    async def claim(
        self,
        commands: Sequence[str] = (),
        *,
        lease_seconds: int | None = None,
        wait_seconds: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> JsonObject | None:
        """The next pushed task, waiting up to wait_seconds (or until stop is set);
        None when none came."""
        if not self._subscribed:
            await self.subscribe(commands, lease_seconds=lease_seconds, credits=self.credits)
        if not self._pushed and self._closed is None and self._refused is None:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError, GaveUp):
                async with asyncio.timeout(wait_seconds or 0.0):
                    await unless(stop, self._arrived.wait())
        if self._pushed:
            return self._pushed.popleft()
        if self._refused is not None:
            refused, self._refused = self._refused, None
            raise refused
        if self._closed is not None:
            raise self._closed
        return None

    async def heartbeat(
        self, task_id: str, lease_token: str | None, *, extend_seconds: int | None = None
    ) -> JsonObject:
        frame = {"type": "heartbeat", "taskId": task_id, "leaseToken": lease_token}
        return _answer(await self._call(_drop_none({**frame, "extendSeconds": extend_seconds})))

    async def nack(
        self,
        task_id: str,
        lease_token: str | None,
        *,
        reason: str | None = None,
        delay_seconds: int | None = None,
    ) -> JsonObject:
        frame = {"type": "nack", "taskId": task_id, "leaseToken": lease_token, "reason": reason}
        return _answer(await self._call(_drop_none({**frame, "delaySeconds": delay_seconds})))

    async def abandon(self, task_id: str, lease_token: str | None) -> JsonObject:
        frame = {"type": "abandon", "taskId": task_id, "leaseToken": lease_token}
        return _answer(await self._call(_drop_none(frame)))

    async def submit_result(
        self,
        task_id: str,
        lease_token: str | None,
        *,
        status: str,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
        artifacts: Sequence[Mapping[str, str]] | None = None,
    ) -> JsonObject:
        """Queues the result for the next results frame; → the recorded result."""
        if self._closed is not None:
            raise self._closed
        item = _drop_none(
            {
                "taskId": task_id,
                "leaseToken": lease_token,
                "status": status,
                "result": dict(result) if result is not None else None,
                "error": error,
                "artifacts": [dict(a) for a in artifacts] if artifacts else None,
            }
        )
        future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._has_pending.set()
        if len(self._pending) >= self.flush_size:
            self._full.set()
        async with asyncio.timeout(self.timeout):
            return await future

    # ------------------------------------------------------------ pushed frames

    def _dispatch(self, frame: JsonObject) -> None:
        kind = frame.get("type")
        if kind == "tasks":
            self._pushed.extend(frame["tasks"])
            self._arrived.set()
        elif kind in ("results", "error") and frame.get("id") in self._batches:
            self._settle_batch(frame)
        elif kind == "error" and frame.get("of") == "ready" and frame.get("id") is None:
            self._refused = _refusal(frame)  # raised by the next claim
            self._arrived.set()
        else:
            super()._dispatch(frame)

    def _settle_batch(self, frame: JsonObject) -> None:
        futures = self._batches.pop(frame["id"])
        answers = frame.get("results") if frame.get("type") == "results" else None
        for i, future in enumerate(futures):
            if future.done():
                continue
            if answers is None:
                future.set_exception(_refusal(frame))
            elif "error" in answers[i]:
                future.set_exception(_refusal(answers[i]))
            else:
                future.set_result(answers[i]["result"])

    def _on_closed(self) -> None:
        self._arrived.set()
        assert self._closed is not None
        for futures in self._batches.values():
            for future in futures:
                if not future.done():
                    future.set_exception(self._closed)
        self._batches.clear()
        for _, future in self._pending:
            if not future.done():
                future.set_exception(self._closed)
        self._pending.clear()

    async def _flush_loop(self) -> None:
        """Sends pending results in one frame each flush_seconds (sooner when
        flush_size are pending); answers resolve each result's future."""
        while True:
            await self._has_pending.wait()
            if len(self._pending) < self.flush_size:
                try:
                    async with asyncio.timeout(self.flush_seconds):
                        await self._full.wait()
                except TimeoutError:
                    pass
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if not self._pending:
                self._has_pending.clear()
            if len(self._pending) < self.flush_size:
                self._full.clear()
            if not batch:
                continue
            correlation = next(self._ids)
            self._batches[correlation] = [future for _, future in batch]
            frame = {"type": "results", "id": correlation, "results": [i for i, _ in batch]}
            try:
                await self._send(frame)
            except CodeqError as exc:
                self._batches.pop(correlation, None)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)


def _answer(frame: JsonObject) -> JsonObject:
    """An ack without its envelope (type, of, id), like the HTTP answer."""
    return {k: v for k, v in frame.items() if k not in ("type", "of", "id")}


class ProducerStream(_Stream):
    """A producer's stream: a `ProducerTransport` that creates over the socket, in
    frames of up to 1000 tasks. get/result/cancel go over `http` (a `Client`)."""

    path = "/v1/codeq/stream/producer"

    def __init__(
        self, url: str, token: str, *, http: Client | None = None, timeout: float = 30.0
    ) -> None:
        super().__init__(url, token, timeout=timeout)
        self.http = http

    async def _create_frame(self, parts: Sequence[bytes]) -> list[JsonObject]:
        """One create frame of already-encoded bodies → its answer items, in order."""
        correlation, future = self._expect()
        head = b'{"type":"create","id":%d,"tasks":[' % correlation
        try:
            await self._send(head + b",".join(parts) + b"]}")
            async with asyncio.timeout(self.timeout):
                answer = await future
        finally:
            self._waiting.pop(correlation, None)
        results: list[JsonObject] = answer["results"]
        return results

    async def create_from(self, body: Mapping[str, Any]) -> JsonObject:
        """Creates a task from a create body (camelCase fields) → the task."""
        (item,) = await self._create_frame([orjson.dumps(_drop_none(body))])
        if "error" in item:
            raise _refusal(item)
        task: JsonObject = item["task"]
        return task

    async def create_many(
        self,
        bodies: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = 16,
        on_result: Callable[[int, JsonObject | CodeqError], None] | None = None,
    ) -> list[JsonObject | CodeqError]:
        """Creates every body, in frames of up to 1000 tasks (and 512 KiB), at most
        `concurrency` frames in flight. → the task or the CodeqError of each body, in
        input order; on_result(index, outcome) as each frame's answers arrive."""
        parts = [orjson.dumps(_drop_none(body)) for body in bodies]
        out: list[JsonObject | CodeqError] = [CodeqError(0, "not sent")] * len(parts)
        lanes = asyncio.Semaphore(max(1, concurrency))

        async def frame(start: int, end: int) -> None:
            async with lanes:
                try:
                    items: list[JsonObject | CodeqError] = list(
                        await self._create_frame(parts[start:end])
                    )
                except CodeqError as exc:
                    items = [exc] * (end - start)
            for offset, item in enumerate(items):
                outcome = item
                if isinstance(item, dict):
                    outcome = _refusal(item) if "error" in item else item["task"]
                out[start + offset] = outcome
                if on_result is not None:
                    on_result(start + offset, outcome)

        async with asyncio.TaskGroup() as group:
            for start, end in _chunks(parts):
                group.create_task(frame(start, end))
        return out

    def _over_http(self) -> Client:
        if self.http is None:
            raise CodeqError(0, "get, result and cancel go over HTTP: pass http=Client(...)")
        return self.http

    async def get(self, task_id: str) -> JsonObject:
        return await self._over_http().get(task_id)

    async def result(self, task_id: str, *, wait_seconds: float | None = None) -> JsonObject:
        return await self._over_http().result(task_id, wait_seconds=wait_seconds)

    async def cancel(self, task_id: str, reason: str | None = None) -> JsonObject:
        return await self._over_http().cancel(task_id, reason)


def _chunks(parts: Sequence[bytes]) -> Iterable[tuple[int, int]]:
    """(start, end) of frames of at most MAX_BATCH bodies and about MAX_FRAME_BYTES."""
    start, size = 0, 0
    for i, part in enumerate(parts):
        if i > start and (i - start >= MAX_BATCH or size + len(part) > MAX_FRAME_BYTES):
            yield start, i
            start, size = i, 0
        size += len(part) + 1
    if start < len(parts):
        yield start, len(parts)
