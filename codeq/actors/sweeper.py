"""The shape shared by the actors that sweep every tenant on a schedule."""

from __future__ import annotations

import time
from abc import abstractmethod
from collections import Counter

from codeq.actors.base import Actor, pause_after_error, tenant_failed
from codeq.actors.scheduler import Scheduler
from codeq.domain import Unavailable
from codeq.store.store import Store


class TenantSweeper(Actor):
    """Runs one store script per tenant, sleeping until the earliest next deadline
    any tenant reported (or `max_idle_ms`, so work scheduled by another daemon that
    has since died is still found), woken early by `due_at`.

    The scripts are atomic and idempotent, so every replica can sweep at once.
    """

    def __init__(
        self, store: Store, scheduler: Scheduler, *, batch: int = 500, max_idle_ms: int = 1000
    ) -> None:
        super().__init__()
        self.store = store
        self.scheduler = scheduler
        self.batch = batch
        self.max_idle_ms = max_idle_ms
        self._planned: float = 0.0
        self.sweeps = 0

    def due_at(self, at_ms: int) -> None:
        """Something in the store needs attention at `at_ms`: wake up by then."""
        if at_ms < self._planned:
            self._planned = at_ms
            self.poke()

    @abstractmethod
    async def sweep_tenant(self, tag: str, now_ms: int) -> tuple[list[str], int | None]:
        """One script call for one tenant: the commands that got ready work, and the
        tenant's next deadline."""

    async def run(self) -> None:
        backoff = 0.1
        while True:
            now = time.time_ns() // 1_000_000
            self._planned = now + self.max_idle_ms
            try:
                full = await self._sweep(now)
            except Unavailable as exc:
                backoff = await pause_after_error(self, exc, backoff)
                continue
            backoff = 0.1
            self.sweeps += 1
            if not full:
                await self.sleep_until(self._planned)

    async def _sweep(self, now: int) -> bool:
        """Sweeps every tenant; True when a batch was full and more may be waiting."""
        full = False
        for tag in await self.store.tenants():
            try:
                commands, next_at = await self.sweep_tenant(tag, now)
            except Unavailable:
                raise
            except Exception as exc:  # this tenant's fault: the others go on
                tenant_failed(self, tag, exc)
                continue
            for command, count in Counter(commands).items():
                self.scheduler.became_ready(tag, command, count)
            full = full or len(commands) >= self.batch
            if next_at is not None and next_at < self._planned:
                self._planned = next_at
        return full
