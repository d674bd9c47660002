"""The actor shape shared by every background job, and the supervisor that runs them."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence

import structlog

from codeq import metrics

log = structlog.get_logger("codeq.actors")


class Actor(ABC):
    """A long-running job with one loop, woken by pokes or by its own deadline."""

    name: str = "actor"

    def __init__(self) -> None:
        self._wake = asyncio.Event()

    @abstractmethod
    async def run(self) -> None:
        """The actor's loop; returns only when the actor is done."""

    def poke(self) -> None:
        """Wakes the actor early (new work, an earlier deadline)."""
        self._wake.set()

    async def sleep_until(self, deadline_ms: float) -> None:
        """Sleeps until the wall-clock deadline (epoch ms) or until poked.

        The deadline is re-read from the clock each time, so drift does not build up
        across iterations; a poke during the previous pass is not lost.
        """
        raise_if_cancelled()
        timeout = max(0.0, (deadline_ms - time.time() * 1000) / 1000)
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()


async def first_of(events: list[asyncio.Event]) -> None:
    """Waits until one of the events is set (the waits it starts are always cancelled)."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def raise_if_cancelled() -> None:
    """Raises CancelledError if this task was asked to stop but the request was lost.

    On Python 3.11, `asyncio.wait_for` (which redis-py uses to send every command
    when a socket timeout is set) returns the result instead of raising when the
    cancel lands just as the command completes; the task still counts the request in
    `cancelling()`. Loops call this at their wait points so a stop is never lost.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Supervisor:
    """Runs actors, restarting one that raises with backoff within a restart budget.

    Past the budget the supervisor sets `failed`; the daemon then exits non-zero so
    systemd restarts the whole process rather than limping on without the actor.
    """

    def __init__(
        self,
        actors: Sequence[Actor],
        *,
        budget: int = 5,
        window: float = 60.0,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.actors = list(actors)
        self.failed = asyncio.Event()
        self.restarts: dict[str, int] = {a.name: 0 for a in actors}
        self._state: dict[str, str] = {a.name: "starting" for a in actors}
        self._budget, self._window, self._backoff = budget, window, backoff
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for actor in self.actors:
            task = asyncio.create_task(self._supervise(actor), name=f"actor:{actor.name}")
            self._tasks.append(task)

    def health(self) -> dict[str, str]:
        """Each actor's state: running, restarting, failed or stopped."""
        return dict(self._state)

    def healthy(self) -> bool:
        return all(state == "running" for state in self._state.values())

    async def _supervise(self, actor: Actor) -> None:
        crashes: deque[float] = deque()
        delay = self._backoff[0]
        while True:
            self._state[actor.name] = "running"
            try:
                await actor.run()
            except Exception:
                log.exception("actor crashed", actor=actor.name)
            else:
                self._state[actor.name] = "stopped"
                return
            now = time.monotonic()
            crashes.append(now)
            while crashes and crashes[0] < now - self._window:
                crashes.popleft()
            if len(crashes) > self._budget:
                log.error(
                    "actor exceeded its restart budget",
                    actor=actor.name,
                    budget=self._budget,
                    window_seconds=self._window,
                )
                self._state[actor.name] = "failed"
                self.failed.set()
                return
            self._state[actor.name] = "restarting"
            self.restarts[actor.name] += 1
            metrics.ACTOR_RESTARTS.labels(actor.name).inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancels every actor and waits for them to finish, bounded by `timeout`."""
        # A cancel can be lost inside a library call (asyncio.wait_for on 3.11), so
        # it is repeated until each actor has stopped or the deadline passes.
        deadline = time.monotonic() + timeout
        pending = set(self._tasks)
        while pending and time.monotonic() < deadline:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=min(0.2, timeout))
        for task in pending:
            log.error("actor did not stop in time", task=task.get_name())
        for name in self._state:
            self._state[name] = "stopped"
        self._tasks.clear()


async def pause_after_error(actor: Actor, error: Exception, delay: float) -> float:
    """Logs an error inside one iteration, backs off, and returns the next backoff."""
    log.warning("actor iteration failed", actor=actor.name, error=str(error), retry_in=delay)
    await actor.sleep_until(time.time() * 1000 + delay * 1000)
    return min(delay * 2, 5.0)


_TENANT_FAILURE_LOG_SECONDS = 60.0
_tenant_failures_logged: dict[tuple[str, str], float] = {}


def tenant_failed(actor: Actor, tag: str, error: Exception) -> None:
    """One tenant's step failed for a reason of its own (not the store being down):
    counted, logged at most once a minute per actor and tenant; the actor goes on
    with the other tenants and tries this one again on its next pass."""
    metrics.ACTOR_ITEM_FAILURES.labels(actor.name).inc()
    now = time.monotonic()
    key = (actor.name, tag)
    if now - _tenant_failures_logged.get(key, -_TENANT_FAILURE_LOG_SECONDS) < (
        _TENANT_FAILURE_LOG_SECONDS
    ):
        return
    _tenant_failures_logged[key] = now
    log.error(
        "actor step failed for one tenant; going on with the others",
        actor=actor.name,
        tenant_tag=tag,
        error=f"{type(error).__name__}: {error}",
    )
