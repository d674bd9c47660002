"""The worker side: claim tasks, run a handler per task, report the outcome.

A `Worker` keeps up to `concurrency` handlers running. One claimer long-polls for
work only when a slot is free; while a handler runs, its lease is renewed every
lease/3 seconds. What the handler returns (or raises) decides the report:

- a dict, or `Complete(result)`: the task ends COMPLETED with that result;
- `Fail(error)`: the task ends FAILED (no retry);
- `Nack(reason)`, or any exception: the task is nacked (retried after a backoff,
  dead-lettered past maxAttempts);
- `Abandon()`: the task is given back at once.

`stop()` is a graceful stop: no new claims, in-flight handlers get `grace_seconds`
to finish, then they are cancelled and their tasks abandoned. A second `stop()`
skips what is left of the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from codeq.client.api import CodeqError, JsonObject
from codeq.client.connections import GaveUp, unless

log = logging.getLogger("codeq.client.worker")

MAX_REASON = 1000  # the API keeps at most 1024 characters of a nack reason
CLAIM_BACKOFF_MAX_SECONDS = 10.0
SETTLE_ATTEMPTS = 3
WHY_LIMIT = 300  # characters of a nack reason or error in a task's log line


@dataclass(frozen=True, slots=True)
class Complete:
    """End the task COMPLETED with this result."""

    result: Mapping[str, Any] = field(default_factory=dict)
    artifacts: Sequence[Mapping[str, str]] = ()


@dataclass(frozen=True, slots=True)
class Fail:
    """End the task FAILED with this error; no retry."""

    error: str


@dataclass(frozen=True, slots=True)
class Nack:
    """Give the task back for a retry after a backoff (delay_seconds overrides it)."""

    reason: str
    delay_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Abandon:
    """Give the task back at once, unchanged."""


@dataclass(frozen=True, slots=True)
class Leave:
    """Report nothing: the lease runs out and the lease reaper retries the task
    (codeQ's `--ack none`)."""


Outcome = Complete | Fail | Nack | Abandon | Leave
Handler = Callable[[JsonObject], Awaitable["Outcome | Mapping[str, Any]"]]


class WorkerTransport(Protocol):
    """What a Worker needs from a transport (`Client` is the HTTP one)."""

    async def claim(
        self,
        commands: Sequence[str] = ...,
        *,
        lease_seconds: int | None = ...,
        wait_seconds: float | None = ...,
        stop: asyncio.Event | None = ...,
    ) -> JsonObject | None: ...

    async def heartbeat(
        self, task_id: str, lease_token: str | None, *, extend_seconds: int | None = ...
    ) -> JsonObject: ...

    async def nack(
        self,
        task_id: str,
        lease_token: str | None,
        *,
        reason: str | None = ...,
        delay_seconds: int | None = ...,
    ) -> JsonObject: ...

    async def abandon(self, task_id: str, lease_token: str | None) -> JsonObject: ...

    async def submit_result(
        self,
        task_id: str,
        lease_token: str | None,
        *,
        status: str,
        result: Mapping[str, Any] | None = ...,
        error: str | None = ...,
        artifacts: Sequence[Mapping[str, str]] | None = ...,
    ) -> JsonObject: ...


@runtime_checkable
class PushTransport(Protocol):
    """A transport that pushes tasks (`WorkerStream`): the worker grants it credits
    (its concurrency) before claiming, and withdraws them when it stops."""

    async def subscribe(
        self, commands: Sequence[str], *, lease_seconds: int | None, credits: int
    ) -> JsonObject: ...

    async def unsubscribe(self) -> None: ...


@dataclass(slots=True)
class WorkerStats:
    """What a worker did, by outcome; `lost` counts leases that passed to
    another worker (or tasks cancelled) while a handler ran."""

    claimed: int = 0
    completed: int = 0
    failed: int = 0
    nacked: int = 0
    abandoned: int = 0
    lost: int = 0
    left: int = 0  # Leave: nothing reported, the lease runs out


class _LeaseEnded(Exception):
    """The lease cannot be renewed: lost to another worker, or the task was cancelled."""

    def __init__(self, cancelled: bool, message: str) -> None:
        super().__init__(message)
        self.cancelled = cancelled


class Worker:
    """Runs `handler` for tasks of `commands` (empty: every command the token
    allows) until `stop()`, or until `max_tasks` tasks have been claimed."""

    def __init__(
        self,
        transport: WorkerTransport,
        commands: Sequence[str],
        handler: Handler,
        *,
        concurrency: int = 1,
        lease_seconds: int = 300,
        wait_seconds: float = 5.0,
        grace_seconds: float = 30.0,
        max_tasks: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.transport = transport
        self.commands = tuple(commands)
        self.handler = handler
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.grace_seconds = grace_seconds
        self.max_tasks = max_tasks
        self.stats = WorkerStats()
        self._stopping: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._reports: set[asyncio.Task[None]] = set()

    @property
    def heartbeat_interval(self) -> float:
        return max(self.lease_seconds / 3, 0.2)

    def stop(self) -> None:
        """Graceful stop (safe to call from a signal handler on the loop); called
        again, it cuts the grace period short."""
        if self._stopping is None or self._hurry is None:
            return
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    async def run(self) -> WorkerStats:
        """Claims and handles tasks until stopped; returns what it did."""
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        slots = asyncio.Semaphore(self.concurrency)
        try:
            if isinstance(self.transport, PushTransport):
                credits = min(self.concurrency, self.max_tasks or self.concurrency)
                await self.transport.subscribe(
                    self.commands, lease_seconds=self.lease_seconds, credits=credits
                )
            while not self._stopping.is_set():
                if self.max_tasks is not None and self.stats.claimed >= self.max_tasks:
                    break
                if not await self._until_stopped(slots.acquire()):
                    break
                task = await self._claim()
                if task is None:
                    slots.release()
                    continue
                self.stats.claimed += 1
                job = asyncio.create_task(self._work(task), name=f"codeq-task-{task['id']}")
                self._jobs.add(job)
                job.add_done_callback(self._jobs.discard)
                job.add_done_callback(lambda _: slots.release())
        except BaseException:
            self._stopping.set()  # a claim that cannot go on: in-flight tasks get the grace period
            raise
        finally:
            await self._drain()
        return self.stats

    # ------------------------------------------------------------ claiming

    async def _until_stopped(self, aw: Awaitable[Any]) -> bool:
        """Awaits aw unless a stop comes first (then aw is cancelled): True if aw finished."""
        try:
            await unless(self._stopping, aw)
        except GaveUp:
            return False
        return True

    async def _claim(self) -> JsonObject | None:
        """One long-poll claim, retried with backoff while codeq is unreachable.
        A stop cuts the claim short: the transport drops a long poll whose answer
        has not begun; a task that comes anyway (its answer was on its way) is
        given back at once."""
        assert self._stopping is not None
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                task = await self.transport.claim(
                    self.commands,
                    lease_seconds=self.lease_seconds,
                    wait_seconds=self.wait_seconds,
                    stop=self._stopping,
                )
            except CodeqError as exc:
                if not exc.retryable:
                    raise
                pause = exc.retry_after or backoff
                log.warning("claim failed (%s); retrying in %.1fs", exc, pause)
                backoff = min(backoff * 2, CLAIM_BACKOFF_MAX_SECONDS)
                await self._until_stopped(asyncio.sleep(pause))
                continue
            if task is not None and self._stopping.is_set():
                await self._settle_shielded(task, Abandon())
                return None
            return task
        return None

    # ------------------------------------------------------------ one task

    async def _work(self, task: JsonObject) -> None:
        """Runs the handler under a renewed lease, then reports its outcome. When
        cancelled (grace period over), cancels the handler and abandons the task."""
        started = time.monotonic()
        handler = asyncio.create_task(self._call_handler(task))
        lease = asyncio.create_task(self._keep_lease(task))
        try:
            await asyncio.wait({handler, lease}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _cancel(handler, lease)
            await self._settle_shielded(task, Abandon())
            raise
        outcome: Outcome | None
        if handler.done():
            await _cancel(lease)
            outcome = handler.result()
        else:
            await _cancel(handler)
            ended = lease.exception()
            if not isinstance(ended, _LeaseEnded):
                raise ended or RuntimeError("lease keeper ended early")
            self.stats.lost += 1
            log.warning("%s: %s; handler stopped", task["id"], ended)
            # A cancelled task ends CANCELLED on abandon; a lost lease is not ours.
            outcome = Abandon() if ended.cancelled else None
        if outcome is not None:
            await self._settle_shielded(task, outcome, time.monotonic() - started)

    async def _call_handler(self, task: JsonObject) -> Outcome:
        try:
            outcome = await self.handler(task)
        except Exception as exc:  # the handler's failure is the task's: nack, keep going
            log.exception("%s: handler raised", task["id"])
            return Nack(f"{type(exc).__name__}: {exc}"[:MAX_REASON])
        if isinstance(outcome, Complete | Fail | Nack | Abandon | Leave):
            return outcome
        return Complete(outcome)

    async def _keep_lease(self, task: JsonObject) -> None:
        """Heartbeats every lease/3 until cancelled; raises _LeaseEnded when the
        lease cannot be kept. A passing failure (codeq unreachable) is retried at
        the next beat: the lease still has two thirds to run."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self.transport.heartbeat(
                    task["id"], task.get("leaseToken"), extend_seconds=self.lease_seconds
                )
            except CodeqError as exc:
                if exc.retryable:
                    log.warning("%s: heartbeat failed (%s)", task["id"], exc)
                    continue
                raise _LeaseEnded("cancelled" in exc.message, str(exc)) from exc

    async def _settle_shielded(self, task: JsonObject, outcome: Outcome, took: float = 0.0) -> None:
        """Reports the outcome, shielded from cancellation (a store write cut short
        would leave the task's fate unknown); drain waits for reports in flight."""
        report = asyncio.create_task(self._settle(task, outcome, took))
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)
        await asyncio.shield(report)

    async def _settle(self, task: JsonObject, outcome: Outcome, took: float) -> None:
        """Reports one outcome; a cancelled task is abandoned instead (so it ends
        CANCELLED); codeq unreachable is retried a few times."""
        task_id, lease_token = task["id"], task.get("leaseToken")
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                await self._report(task_id, lease_token, outcome)
            except CodeqError as exc:
                cancelled = exc.status == 409 and "cancelled" in exc.message
                if cancelled and not isinstance(outcome, Abandon):
                    outcome = Abandon()
                    continue
                if exc.retryable and attempt + 1 < SETTLE_ATTEMPTS:
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                self.stats.lost += 1
                log.warning("%s: could not report %s: %s", task_id, _name(outcome), exc)
                return
            self._count(outcome)
            command, name, why = task.get("command"), _name(outcome), _why(outcome)
            if why:  # a warning, so a quiet worker still shows failures, with their reason
                log.warning("%s %s %s (%.2fs): %s", task_id, command, name, took, why)
            else:
                log.info("%s %s %s (%.2fs)", task_id, command, name, took)
            return

    async def _report(self, task_id: str, lease_token: str | None, outcome: Outcome) -> None:
        t = self.transport
        match outcome:
            case Complete(result=result, artifacts=artifacts):
                await t.submit_result(
                    task_id, lease_token, status="COMPLETED", result=result, artifacts=artifacts
                )
            case Fail(error=error):
                await t.submit_result(task_id, lease_token, status="FAILED", error=error)
            case Nack(reason=reason, delay_seconds=delay):
                await t.nack(task_id, lease_token, reason=reason, delay_seconds=delay)
            case Abandon():
                await t.abandon(task_id, lease_token)
            case Leave():
                pass

    def _count(self, outcome: Outcome) -> None:
        s = self.stats
        match outcome:
            case Complete():
                s.completed += 1
            case Fail():
                s.failed += 1
            case Nack():
                s.nacked += 1
            case Abandon():
                s.abandoned += 1
            case Leave():
                s.left += 1

    # ------------------------------------------------------------ stopping

    async def _drain(self) -> None:
        """Lets in-flight handlers finish (within the grace period once stopping),
        then cancels what is left: each cancelled job abandons its task."""
        assert self._stopping is not None and self._hurry is not None
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        if isinstance(self.transport, PushTransport):
            try:  # no more pushes; tasks pushed but not started go back
                await self.transport.unsubscribe()
            except CodeqError as exc:
                log.warning("could not pause the stream: %s", exc)
        if self._jobs:
            log.info("waiting for %d in-flight task(s)", len(self._jobs))
        stopping = asyncio.create_task(self._stopping.wait())
        hurry = asyncio.create_task(self._hurry.wait())
        try:
            while self._jobs and not self._hurry.is_set():
                if deadline is None and self._stopping.is_set():
                    deadline = loop.time() + self.grace_seconds
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    break
                # Until the stop comes, its event is one more thing to wake on.
                events = {hurry} if deadline is not None else {hurry, stopping}
                await asyncio.wait(
                    {*self._jobs, *events},
                    timeout=left,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            stopping.cancel()
            hurry.cancel()
            leftover = set(self._jobs)
            if leftover:
                why = "stopping now" if self._hurry.is_set() else "grace period over"
                log.warning("%s: abandoning %d task(s)", why, len(leftover))
                for job in leftover:
                    job.cancel()
                await asyncio.wait(leftover)
            if self._reports:
                await asyncio.wait(set(self._reports))


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    """Cancels child tasks and waits for them to end (without raising their
    CancelledError into the caller, which is not itself cancelled)."""
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks)


def _why(outcome: Outcome) -> str:
    """A nack's reason or a failure's error on one line, its end kept (the end of a
    handler's stderr says most)."""
    match outcome:
        case Nack(reason=text) | Fail(error=text):
            flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
            return flat if len(flat) <= WHY_LIMIT else "…" + flat[-WHY_LIMIT:]
    return ""


def _name(outcome: Outcome) -> str:
    return {Complete: "completed", Fail: "failed", Nack: "nacked", Abandon: "abandoned"}[
        type(outcome)
    ]
