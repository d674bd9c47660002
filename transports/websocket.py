"""The WebSocket transport (SPEC §5): one long-lived socket per worker and per
producer, on its own port, so the hot path pays no per-request HTTP cost.

Like the HTTP transport it parses, authenticates (once, at open), calls the service
and encodes; no business rule and no store call lives here. The frames, close codes,
credit rule and disconnect rule are documented in the README ("WebSocket streams").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from enum import IntEnum
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web
from codeq_transports.connections import LINGER_SECONDS, ConnectionGuard, GuardedRunner

from codeq import metrics, wire
from codeq.domain import (
    ClaimRequest,
    CodeqError,
    Conflict,
    Forbidden,
    Invalid,
    LeaseProof,
    NotFound,
    Principal,
    Task,
    TooManyRequests,
    Unauthenticated,
    Unavailable,
    rfc3339,
)
from codeq.ratelimit import Scope
from codeq.transport import TransportContext

log = structlog.get_logger("codeq.websocket")

PREFIX = "/v1/codeq/stream"
AUTH_TIMEOUT_SECONDS = 5.0  # for the first frame, when the upgrade had no Authorization
PING_SECONDS = 20.0  # WebSocket pings; no pong within half of it closes the socket
CLOSE_TIMEOUT_SECONDS = 5.0  # for the peer's answer to our close frame
# A worker stream's claim loop long-polls this long per claim: short, because a
# socket that drops while its claim waits is released only when the claim returns.
CLAIM_WAIT_SECONDS = 2.0
CLAIM_RETRY_MAX_SECONDS = 5.0
MAX_ID_LENGTH = 128


class CloseCode(IntEnum):
    """Why the server closed a stream (4xxx: the application's own codes)."""

    GOING_AWAY = 1001  # the daemon is shutting down
    INTERNAL = 1011
    TRY_AGAIN = 1013  # auth could not be checked (e.g. JWKS unreachable)
    BAD_FIRST_FRAME = 4400
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403


_STATUS = wire.ERROR_STATUS

READY_FIELDS = frozenset({"type", "id", "commands", "leaseSeconds", "credits"})
RESULTS_FIELDS = frozenset({"type", "id", "results"})
HEARTBEAT_FIELDS = frozenset({"type", "id", "taskId", "extendSeconds", "leaseToken"})
NACK_FIELDS = frozenset({"type", "id", "taskId", "delaySeconds", "reason", "leaseToken"})
ABANDON_FIELDS = frozenset({"type", "id", "taskId", "leaseToken"})
PAUSE_FIELDS = frozenset({"type", "id"})
CREATE_FIELDS = frozenset({"type", "id", "tasks"})

Authenticate = Callable[[str | None], Awaitable[Principal]]


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _decode(data: str | bytes) -> dict[str, Any]:
    """A client frame: a JSON object with a string "type"."""
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"malformed JSON frame: {exc}") from exc
    if not isinstance(frame, dict):
        raise Invalid("a frame must be a JSON object")
    wire.check_depth(frame, data if isinstance(data, bytes) else data.encode())
    if not isinstance(frame.get("type"), str):
        raise Invalid("a frame needs a string type", field="type")
    return frame


def _correlation(frame: dict[str, Any]) -> str | int | None:
    """The client's "id" of a frame, echoed in the answer."""
    value = frame.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Invalid("id must be a string or an integer", field="id")
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise Invalid(f"id must be at most {MAX_ID_LENGTH} characters", field="id")
    return value


def _task_id(frame: dict[str, Any]) -> str:
    task_id = frame.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise Invalid("taskId is required", field="taskId")
    return task_id


def _credits(frame: dict[str, Any], most: int) -> int:
    value = frame.get("credits", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise Invalid(f"credits must be an integer between 0 and {most}", field="credits")
    return value


def _error_item(exc: CodeqError) -> dict[str, Any]:
    return wire.error_item(exc, _STATUS[type(exc)])


def _no_longer_leased(exc: CodeqError) -> bool:
    """Whether a refused heartbeat/result/nack/abandon means the task is no longer
    leased to this worker (so it stops counting against the stream's credits). A
    cancel request refuses results and heartbeats but leaves the lease in place
    until the worker's nack or abandon."""
    if isinstance(exc, NotFound):
        return True
    if isinstance(exc, Forbidden):
        return "leased to another" in exc.message
    return isinstance(exc, Conflict) and exc.message != "task was cancelled"


def _warning(frame: dict[str, Any], known: frozenset[str], extra: Iterable[str] = ()) -> str | None:
    unknown = [*wire.unknown_fields(frame, known), *extra]
    return "unknown fields ignored: " + ", ".join(unknown) if unknown else None


# ---------------------------------------------------------------- one socket


class Stream:
    """One open stream: reads frames one at a time, answers each, counts them.
    Subclasses name their frame handlers in `handlers`."""

    kind = "stream"

    def __init__(self, ctx: TransportContext, ws: web.WebSocketResponse, who: Principal) -> None:
        self.ctx = ctx
        self.ws = ws
        self.who = who
        self.frames_in = 0
        self.frames_out = 0
        self.opened = time.monotonic()
        self._busy = False
        # Set while no frame is being handled and (worker) no task is held: what a
        # drain waits for before closing the socket.
        self.quiet = asyncio.Event()
        self.quiet.set()
        self.handlers: dict[str, Callable[[dict[str, Any], str | int | None], Awaitable[None]]] = {}

    def _count(self, direction: str, frame_type: str) -> None:
        if self.ctx.metrics is not None:
            metrics.STREAM_MESSAGES.labels(self.kind, direction, frame_type).inc()

    async def send(self, frame: dict[str, Any]) -> bool:
        """Sends one frame; False when the socket is already closing (the reader
        then ends, and the disconnect rule applies)."""
        if self.ws.closed:
            return False
        try:
            await self.ws.send_str(orjson.dumps(frame).decode())
        except ConnectionResetError:
            return False
        self.frames_out += 1
        self._count("out", frame["type"])
        return True

    async def error(
        self, exc: CodeqError, of: str | None, correlation: str | int | None, **more: Any
    ) -> None:
        frame: dict[str, Any] = {"type": "error", **_error_item(exc), **more}
        if of is not None:
            frame["of"] = of
        if correlation is not None:
            frame["id"] = correlation
        await self.send(frame)

    async def read(self) -> None:
        """Handles frames until the socket closes."""
        async for message in self.ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await self._frame(message.data)
            elif message.type is WSMsgType.ERROR:
                log.info("stream read failed", stream=self.kind, error=str(self.ws.exception()))
                break

    async def _frame(self, data: str | bytes) -> None:
        """One frame: its handler's answer, or an error frame; never a crash."""
        self.frames_in += 1
        self._busy = True
        self.quiet.clear()
        of: str | None = None
        correlation: str | int | None = None
        frame: dict[str, Any] = {}
        try:
            frame = _decode(data)
            of = frame["type"]
            self._count("in", of if of in self.handlers else "unknown")
            correlation = _correlation(frame)
            handler = self.handlers.get(of)
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                raise Invalid(f"unknown frame type {of!r} (expected {known})", field="type")
            await handler(frame, correlation)
        except CodeqError as exc:
            task_id = frame.get("taskId")
            await self.error(exc, of, correlation, **({"taskId": task_id} if task_id else {}))
        except Exception:  # a bug must not take the socket down: logged, answered 500
            log.exception("stream frame failed", stream=self.kind, frame_type=of)
            internal: dict[str, Any] = {"type": "error", "error": "internal error", "code": 500}
            await self.send({**internal, "of": of, "id": correlation})
        finally:
            self._busy = False
            self._update_quiet()

    def _update_quiet(self) -> None:
        if not self._busy:
            self.quiet.set()

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])

    def summary(self) -> dict[str, Any]:
        """What the close log line reports."""
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "seconds": round(time.monotonic() - self.opened, 3),
        }

    async def serve(self) -> None:
        await self.read()

    def stop_claiming(self) -> None:
        """The daemon is draining: no new work goes out on this stream."""


class ProducerStream(Stream):
    """A producer's stream: `create` frames of up to 1000 tasks, one store round trip
    each, answered by `created` frames in order."""

    kind = "producer"

    def __init__(
        self, ctx: TransportContext, ws: web.WebSocketResponse, who: Principal, token: str
    ) -> None:
        super().__init__(ctx, ws, who)
        self._token = token
        self.created = 0
        self.handlers = {"create": self._create}

    async def _create(self, frame: dict[str, Any], correlation: str | int | None) -> None:
        unknown = wire.batch_unknown_fields(frame, "tasks", wire.CREATE_FIELDS)
        warning = _warning(frame, CREATE_FIELDS, unknown)
        items = wire.parse_batch_create(frame)
        limiter = self.ctx.limiter
        if limiter is not None:
            await limiter.enforce(self._token, Scope.CREATE, cost=len(items))
        outcomes = await self.ctx.service.create_many(self.who, items)
        results = [
            _error_item(o) if isinstance(o, CodeqError) else wire.created_item(item, *o)  # type: ignore[arg-type]
            for item, o in zip(items, outcomes, strict=True)
        ]
        self.created += sum(1 for o in outcomes if not isinstance(o, CodeqError))
        answer: dict[str, Any] = {"type": "created", "id": correlation, "results": results}
        if warning:
            answer["warning"] = warning
        await self.send(answer)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "created": self.created}


class WorkerStream(Stream):
    """A worker's stream. The worker's `ready` frames grant credits; one claim loop,
    owned by the stream, leases work while the stream holds fewer unacked tasks than
    its credits and pushes it in `tasks` frames. A task stops counting when its
    result, nack or abandon is accepted, or is refused because the task is no longer
    leased. When the socket closes, every task it still holds is abandoned at once
    (back to ready, next in line)."""

    kind = "worker"

    def __init__(
        self, ctx: TransportContext, ws: web.WebSocketResponse, who: Principal, token: str
    ) -> None:
        super().__init__(ctx, ws, who)
        self._token = token
        self.max_credits = ctx.config.websocket_max_credits
        self.credits = 0  # the window: at most this many unacked tasks at once
        self.held: dict[str, str | None] = {}  # task id -> lease token, pushed and unacked
        self.commands: tuple[str, ...] = ()
        self.lease_seconds: int | None = None
        self._ready = False
        self._wake = asyncio.Event()  # credits, held or stopping changed
        self._stop = asyncio.Event()  # no more claims: the socket closed or the daemon drains
        self.pushed = 0
        self.acked = 0
        self.released = 0
        self.handlers = {
            "ready": self._on_ready,
            "results": self._on_results,
            "heartbeat": self._on_heartbeat,
            "nack": self._on_nack,
            "abandon": self._on_abandon,
            "pause": self._on_pause,
        }

    # ------------------------------------------------------------ the socket's life

    async def serve(self) -> None:
        """Reads frames while the claim loop pushes work; when the socket closes,
        stops the loop and gives back what the worker still held."""
        loop = asyncio.create_task(self._claim_loop(), name=f"codeq-ws-claims-{self.who.subject}")
        try:
            await self.read()
        finally:
            self.stop_claiming()
            await self._end_claim_loop(loop)
            await self._release_held()

    def stop_claiming(self) -> None:
        self._stop.set()
        self._wake.set()

    async def _end_claim_loop(self, loop: asyncio.Task[None]) -> None:
        """Waits for the claim in flight (never cut short: it may be leasing tasks,
        which then come back here to be given back); bounded, then cancelled."""
        done, _ = await asyncio.wait({loop}, timeout=CLAIM_WAIT_SECONDS + 10)
        if not done:
            loop.cancel()
            await asyncio.wait({loop})
        if not loop.cancelled() and loop.exception() is not None:
            log.error("claim loop failed", exc_info=loop.exception(), subject=self.who.subject)

    async def _release_held(self) -> None:
        """The disconnect rule: every task pushed and not acked goes back to ready now."""
        held, self.held = self.held, {}
        for task_id, token in held.items():
            await self._give_back(task_id, token)
        self._update_quiet()

    async def _give_back(self, task_id: str, token: str | None) -> None:
        proof = LeaseProof(worker_id=self.who.subject, lease_token=token)
        try:
            await asyncio.shield(self.ctx.service.abandon(self.who, task_id, proof))
        except CodeqError as exc:  # already moved on (expired, re-leased) or store down
            log.info("could not give back a task", task_id=task_id, error=exc.message)
        else:
            self.released += 1

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "pushed": self.pushed,
            "acked": self.acked,
            "released": self.released,
        }

    # ------------------------------------------------------------ credits

    def _release(self, task_id: str) -> None:
        """The task stopped counting against the credits."""
        self.held.pop(task_id, None)
        self._wake.set()
        self._update_quiet()

    def _refused(self, task_id: str, token: str | None, exc: CodeqError) -> None:
        """A refused operation on a task frees its credit if the refusal means the
        lease this stream pushed is gone: a token other than the pushed one proves
        nothing about it."""
        pushed = self.held.get(task_id)
        if _no_longer_leased(exc) and (token is None or token == pushed):
            self._release(task_id)

    def _update_quiet(self) -> None:
        if not self._busy and not self.held:
            self.quiet.set()
        else:
            self.quiet.clear()

    async def _claim_loop(self) -> None:
        try:
            await self._claims()
        except Exception:  # logged, and the socket closed: never a silent dead loop
            log.exception("claim loop failed", subject=self.who.subject)
            await self.close(CloseCode.INTERNAL, "internal error")

    async def _claims(self) -> None:
        retry = 0.5
        while not self._stop.is_set() and not self.ctx.service.draining:
            free = self.credits - len(self.held)
            if not self._ready or free <= 0:
                self._wake.clear()
                await self._wake.wait()
                continue
            request = ClaimRequest(self.commands, self.lease_seconds, CLAIM_WAIT_SECONDS)
            try:
                tasks = await self._claim(request, min(free, wire.MAX_BATCH))
            except (Invalid, Forbidden, Unauthenticated) as exc:  # the ready cannot be served
                self.credits = 0
                await self.error(exc, "ready", None)
                continue
            except (Unavailable, TooManyRequests) as exc:
                await self.error(exc, "ready", None)
                pause = exc.retry_after if isinstance(exc, TooManyRequests) else retry
                retry = min(retry * 2, CLAIM_RETRY_MAX_SECONDS)
                await self._sleep(pause)
                continue
            retry = 0.5
            await self._deliver(tasks)

    async def _claim(self, request: ClaimRequest, count: int) -> list[Task]:
        limiter = self.ctx.limiter
        if limiter is not None and limiter.applies(Scope.CLAIM):
            await limiter.enforce(self._token, Scope.CLAIM)
        return await self.ctx.service.claim_many(self.who, request, count)

    async def _deliver(self, tasks: list[Task]) -> None:
        """Pushes what fits in the credits; tasks leased for credits withdrawn
        meanwhile (a pause, a closed socket) are given back at once."""
        room = 0 if self._stop.is_set() else max(0, self.credits - len(self.held))
        keep, extra = tasks[:room], tasks[room:]
        for task in keep:
            self.held[task.id] = task.lease_token
        if keep:
            self._update_quiet()
            self.pushed += len(keep)
            await self.send(
                {
                    "type": "tasks",
                    "tasks": [wire.task_to_wire(t, with_lease_token=True) for t in keep],
                }
            )
        for task in extra:
            await self._give_back(task.id, task.lease_token)

    async def _sleep(self, seconds: float) -> None:
        """Waits `seconds`, or less if the stream stops claiming."""
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            pass

    # ------------------------------------------------------------ frames

    async def _on_ready(self, frame: dict[str, Any], correlation: str | int | None) -> None:
        warning = _warning(frame, READY_FIELDS)
        request = wire.parse_claim(
            {k: frame[k] for k in ("commands", "leaseSeconds") if k in frame},
            empty_means_all=True,
        )
        added = _credits(frame, self.max_credits)
        if "commands" in frame or not self._ready:
            self.commands = request.commands
        if "leaseSeconds" in frame or not self._ready:
            self.lease_seconds = request.lease_seconds
        self._ready = True
        self.credits = min(self.credits + added, self.max_credits)
        answer: dict[str, Any] = {
            "type": "ack",
            "of": "ready",
            "id": correlation,
            "credits": self.credits,
            "held": len(self.held),
        }
        if warning:
            answer["warning"] = warning
        await self.send(answer)
        self._wake.set()

    async def _on_pause(self, frame: dict[str, Any], correlation: str | int | None) -> None:
        """No more pushes until the next ready: a claim still in flight gives back
        what it brings (there are no credits for it), so no tasks frame follows."""
        warning = _warning(frame, PAUSE_FIELDS)
        self.credits = 0
        answer: dict[str, Any] = {"type": "ack", "of": "pause", "id": correlation}
        answer["held"] = len(self.held)
        if warning:
            answer["warning"] = warning
        await self.send(answer)

    async def _on_results(self, frame: dict[str, Any], correlation: str | int | None) -> None:
        unknown = wire.batch_unknown_fields(frame, "results", wire.BATCH_RESULT_ITEM_FIELDS)
        warning = _warning(frame, RESULTS_FIELDS, unknown)
        items = wire.parse_batch_results(frame)
        outcomes = await self.ctx.service.submit_results(self.who, items)
        answers = []
        for raw, outcome in zip(frame["results"], outcomes, strict=True):
            if isinstance(outcome, CodeqError):
                task_id = raw.get("taskId") if isinstance(raw, dict) else None
                if isinstance(task_id, str):
                    token = raw.get("leaseToken")
                    self._refused(task_id, token if isinstance(token, str) else None, outcome)
                answers.append({"taskId": task_id, **_error_item(outcome)})
            else:
                self.acked += 1
                self._release(outcome.task_id)
                answers.append({"taskId": outcome.task_id, "result": wire.result_to_wire(outcome)})
        answer: dict[str, Any] = {"type": "results", "id": correlation, "results": answers}
        if warning:
            answer["warning"] = warning
        await self.send(answer)

    def _proof(self, frame: dict[str, Any]) -> LeaseProof:
        return LeaseProof(self.who.subject, wire.parse_lease_token(frame, None))

    async def _acked(
        self,
        frame: dict[str, Any],
        correlation: str | int | None,
        known: frozenset[str],
        call: Callable[[str, LeaseProof], Awaitable[dict[str, Any]]],
        *,
        settles: bool,
    ) -> None:
        """Runs a per-task operation and answers with an ack; `settles`: the task
        stops counting when it is accepted."""
        warning = _warning(frame, known)
        task_id = _task_id(frame)
        proof = self._proof(frame)
        try:
            fields = await call(task_id, proof)
        except CodeqError as exc:
            self._refused(task_id, proof.lease_token, exc)
            raise
        if settles:
            self._release(task_id)
        answer = {
            "type": "ack",
            "of": frame["type"],
            "id": correlation,
            "taskId": task_id,
            **fields,
        }
        if warning:
            answer["warning"] = warning
        await self.send(answer)

    async def _on_heartbeat(self, frame: dict[str, Any], correlation: str | int | None) -> None:
        extend = wire.parse_extend_seconds(frame)

        async def beat(task_id: str, proof: LeaseProof) -> dict[str, Any]:
            until = await self.ctx.service.heartbeat(self.who, task_id, proof, extend)
            return {"leaseUntil": rfc3339(until)}

        await self._acked(frame, correlation, HEARTBEAT_FIELDS, beat, settles=False)

    async def _on_nack(self, frame: dict[str, Any], correlation: str | int | None) -> None:
        delay, reason = wire.parse_nack(frame)

        async def nack(task_id: str, proof: LeaseProof) -> dict[str, Any]:
            outcome = await self.ctx.service.nack(self.who, task_id, proof, delay, reason)
            return wire.nack_to_wire(outcome)

        await self._acked(frame, correlation, NACK_FIELDS, nack, settles=True)

    async def _on_abandon(self, frame: dict[str, Any], correlation: str | int | None) -> None:
        async def abandon(task_id: str, proof: LeaseProof) -> dict[str, Any]:
            return {"status": await self.ctx.service.abandon(self.who, task_id, proof)}

        await self._acked(frame, correlation, ABANDON_FIELDS, abandon, settles=True)


# ---------------------------------------------------------------- opening a stream


async def _first_frame_token(ws: web.WebSocketResponse) -> str | None:
    """The token of the first frame, {"type":"auth","token":…}; None after closing
    the socket with the reason."""
    try:
        message = await ws.receive(timeout=AUTH_TIMEOUT_SECONDS)
    except TimeoutError:
        await _refuse(ws, CloseCode.BAD_FIRST_FRAME, "no auth frame within 5 s")
        return None
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None  # closed (or broken) before authenticating
    try:
        frame = _decode(message.data)
    except Invalid:
        frame = {}
    if frame.get("type") != "auth":
        await _refuse(ws, CloseCode.BAD_FIRST_FRAME, 'first frame must be {"type":"auth",...}')
        return None
    token = frame.get("token")
    if not isinstance(token, str) or not token:
        await _refuse(ws, CloseCode.UNAUTHENTICATED, "auth frame has no token")
        return None
    return token


async def _refuse(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    log.info("stream refused", code=code, reason=reason)
    await ws.close(code=code, message=reason.encode()[:120])


async def _authenticate(
    ws: web.WebSocketResponse,
    request: web.Request,
    kind: str,
    authenticate: Authenticate,
    other: Authenticate,
) -> tuple[Principal, str] | None:
    """Who opened the stream, and their token; None after refusing it: 4401 for a
    missing or bad token, 4403 for a good token of the other kind (a producer
    token on the worker stream), 1013 when auth cannot be checked now."""
    token = _bearer(request) or await _first_frame_token(ws)
    if token is None:
        return None
    try:
        return await authenticate(token), token
    except Unauthenticated as exc:
        try:
            await other(token)
        except CodeqError:
            await _refuse(ws, CloseCode.UNAUTHENTICATED, exc.message)
        else:
            await _refuse(ws, CloseCode.FORBIDDEN, f"this token cannot open the {kind} stream")
    except Forbidden as exc:
        await _refuse(ws, CloseCode.FORBIDDEN, exc.message)
    except Unavailable:
        await _refuse(ws, CloseCode.TRY_AGAIN, "auth is unavailable; try again later")
    return None


async def worker_stream(request: web.Request) -> web.StreamResponse:
    transport = request.app[TRANSPORT]
    return await transport.open(request, "worker")


async def producer_stream(request: web.Request) -> web.StreamResponse:
    transport = request.app[TRANSPORT]
    return await transport.open(request, "producer")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _first_request_started(guard: ConnectionGuard) -> Any:
    """Tells the guard each connection's request has begun (its header deadline met)."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        guard.request_started(request.transport)
        return await handler(request)

    return middleware


class WebSocketTransport:
    """Worker and producer streams (SPEC §5) on their own TCP port."""

    name = "websocket"

    def __init__(self, context: TransportContext) -> None:
        self._ctx = context
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._accepting = True
        self._draining = False
        self.streams: set[Stream] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> list[str]:
        config = self._ctx.config
        guard = ConnectionGuard(
            self.name,
            max_connections=config.http_max_connections,
            header_timeout=config.http_header_timeout_seconds,
        )
        app = web.Application(middlewares=[_first_request_started(guard)])
        app[TRANSPORT] = self
        app.router.add_get("/healthz", healthz)
        app.router.add_get(f"{PREFIX}/worker", worker_stream)
        app.router.add_get(f"{PREFIX}/producer", producer_stream)
        self._runner = GuardedRunner(
            app,
            guard,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=config.shutdown_grace_seconds,
            keepalive_timeout=config.http_idle_timeout_seconds,
            lingering_time=LINGER_SECONDS,
        )
        await self._runner.setup()
        self._site = web.TCPSite(
            self._runner,
            config.bind_address,
            config.websocket_port,
            reuse_address=True,
            reuse_port=config.workers > 1 or None,
        )
        await self._site.start()
        host, port = self._bound()
        return [f"ws://{host}:{port}"]

    def _bound(self) -> tuple[str, int]:
        assert self._site is not None
        server = self._site._server
        assert server is not None and hasattr(server, "sockets")
        host, port = server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        """The bound TCP port (useful when configured as 0)."""
        return self._bound()[1]

    async def open(self, request: web.Request, kind: str) -> web.StreamResponse:
        """Upgrades, authenticates and serves one stream until it closes."""
        if not self._accepting:
            return web.json_response({"error": "shutting down"}, status=503)
        ctx = self._ctx
        ws = web.WebSocketResponse(
            heartbeat=PING_SECONDS,
            timeout=CLOSE_TIMEOUT_SECONDS,
            max_msg_size=ctx.config.max_body_bytes,
            compress=False,
        )
        await ws.prepare(request)
        if kind == "worker":
            opened = await _authenticate(ws, request, kind, ctx.auth.worker, ctx.auth.producer)
        else:
            opened = await _authenticate(ws, request, kind, ctx.auth.producer, ctx.auth.worker)
        if opened is None:
            return ws
        who, token = opened
        if self._draining:  # authenticated while the daemon began to drain
            await _refuse(ws, CloseCode.GOING_AWAY, "server shutting down")
            return ws
        stream: Stream = (
            WorkerStream(ctx, ws, who, token)
            if kind == "worker"
            else ProducerStream(ctx, ws, who, token)
        )
        await self._serve(stream, request)
        return ws

    async def _serve(self, stream: Stream, request: web.Request) -> None:
        who = stream.who
        context = {"stream": stream.kind, "tenant": who.tenant, "subject": who.subject}
        log.info("stream opened", remote=request.remote, **context)
        self.streams.add(stream)
        gauge = metrics.STREAM_CONNECTIONS.labels(stream.kind) if self._ctx.metrics else None
        if gauge is not None:
            gauge.inc()
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            hello: dict[str, Any] = {
                "type": "hello",
                "stream": stream.kind,
                "tenantId": who.tenant,
                "subject": who.subject,
            }
            if isinstance(stream, WorkerStream):
                hello["maxCredits"] = stream.max_credits
            await stream.send(hello)
            await stream.serve()
        finally:
            self.streams.discard(stream)
            self._handlers.discard(handler)
            if gauge is not None:
                gauge.dec()
            if not stream.ws.closed:
                await stream.ws.close()
            code = stream.ws.close_code
            log.info("stream closed", code=code and int(code), **context, **stream.summary())

    async def stop_accepting(self) -> None:
        self._accepting = False
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def drain(self, timeout: float) -> None:
        """Stops every claim loop (no new pushes), gives open streams the grace period
        to send their results, then closes them with 1001; tasks still held are
        abandoned by the disconnect rule."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._draining = True
        streams = list(self.streams)
        for stream in streams:
            stream.stop_claiming()
        quiet = [asyncio.create_task(s.quiet.wait()) for s in streams if not s.quiet.is_set()]
        if quiet:
            await asyncio.wait(quiet, timeout=max(0.0, deadline - loop.time()))
            for waiting in quiet:
                waiting.cancel()
        async with asyncio.TaskGroup() as closing:
            for stream in streams:
                closing.create_task(stream.close(CloseCode.GOING_AWAY, "server shutting down"))
        if self._handlers:  # each gives back what its worker still held
            await asyncio.wait(set(self._handlers), timeout=CLAIM_WAIT_SECONDS + 10)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


TRANSPORT = web.AppKey("codeq.websocket", WebSocketTransport)
