"""Telling a store that stopped answering from a daemon that is merely busy.

A fixed timeout on each operation cannot do both: under load (a thousand clients)
an operation waits for a pooled connection and for the event loop far longer than
the store takes to answer, while a frozen store must be a 503 within a second. So
the store is judged by its progress instead: while operations are in flight, some
answer must arrive every `timeout` seconds. When none does, the store is down:
every operation in flight fails at once (503), new ones fail fast, and a probe
pings until the store answers again. Each operation keeps a generous bound of its
own (`operation_bound`) for the rare one that hangs while others are answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from codeq.domain import Unavailable

log = structlog.get_logger("codeq.store")

# An operation may take this many store timeouts in all (waiting for a connection
# under load included) while the store keeps answering others.
OPERATION_BOUND_FACTOR = 8
PROBE_INTERVAL_SECONDS = 0.1


class StoreHealth:
    """Watches the store's answers; see the module docstring."""

    def __init__(self, timeout: float, ping: Callable[[], Awaitable[object]]) -> None:
        self.timeout = timeout
        self.operation_bound = timeout * OPERATION_BOUND_FACTOR
        self._ping = ping
        self._inflight: set[asyncio.Timeout] = set()
        self._progress = 0.0  # loop time of the last answer, or of the first operation
        self._timer: asyncio.TimerHandle | None = None
        self._probe: asyncio.Task[None] | None = None
        self.down = False

    def unanswered(self) -> Unavailable:
        return Unavailable(f"store did not answer within {self.timeout:g}s")

    def begin(self, scope: asyncio.Timeout) -> None:
        """An operation starts under `scope` (its own bound); raises Unavailable at
        once while the store is down."""
        if self.down:
            raise self.unanswered()
        if not self._inflight:
            loop = asyncio.get_running_loop()
            self._progress = loop.time()
            if self._timer is None:
                self._timer = loop.call_at(self._progress + self.timeout, self._check)
        self._inflight.add(scope)

    def end(self, scope: asyncio.Timeout, *, answered: bool) -> None:
        """The operation is over; `answered`: the store replied (a value or an error)."""
        self._inflight.discard(scope)
        if answered:
            self._progress = asyncio.get_running_loop().time()

    def _check(self) -> None:
        self._timer = None
        if not self._inflight or self.down:
            return
        loop = asyncio.get_running_loop()
        due = self._progress + self.timeout
        if loop.time() < due:
            self._timer = loop.call_at(due, self._check)
            return
        self.down = True
        log.error(
            "store stopped answering; failing operations until it does",
            timeout_seconds=self.timeout,
            in_flight=len(self._inflight),
        )
        now = loop.time()
        for scope in self._inflight:
            scope.reschedule(now)  # each raises TimeoutError in its own task
        self._probe = asyncio.create_task(self._until_it_answers(), name="store probe")
        self._probe.add_done_callback(_log_failure)

    async def _until_it_answers(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            try:
                async with asyncio.timeout(self.timeout):
                    await self._ping()
            except Exception:  # still down, or refusing: try again
                continue
            self.down = False
            log.info("store answers again")
            return

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("store probe failed", error=repr(task.exception()))
