"""The lease reaper: retries or dead-letters tasks whose lease expired."""

from __future__ import annotations

import structlog

from codeq import metrics
from codeq.actors.scheduler import Scheduler
from codeq.actors.sweeper import TenantSweeper
from codeq.domain import RetryPolicy
from codeq.observability import LogBudget
from codeq.store.store import Store

log = structlog.get_logger("codeq.reaper")


class LeaseReaper(TenantSweeper):
    """Treats an expired lease like a nack without a delay override
    (retryReason LEASE_EXPIRED), within about a second of expiry."""

    name = "lease reaper"

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        retry: RetryPolicy,
        *,
        batch: int = 500,
        max_idle_ms: int = 1000,
    ) -> None:
        super().__init__(store, scheduler, batch=batch, max_idle_ms=max_idle_ms)
        self.retry = retry
        self.expired = 0
        self._lines = LogBudget(per_minute=60)

    def lease_ends_at(self, at_ms: int) -> None:
        self.due_at(at_ms)

    async def sweep_tenant(self, tag: str, now_ms: int) -> tuple[list[str], int | None]:
        expired, next_at = await self.store.reap(
            tag, now_ms=now_ms, batch=self.batch, retry=self.retry
        )
        self.expired += len(expired)
        for lease in expired:
            metrics.LEASE_EXPIRED.labels(lease.command).inc()
            if self._lines.allow():
                log.warning(
                    "lease expired",
                    task_id=lease.task_id,
                    command=lease.command,
                    worker=lease.worker_id,
                    attempt=lease.attempt,
                    outcome=lease.outcome,
                    not_logged_before=self._lines.suppressed() or None,
                )
        # only the tasks that are ready again wake a parked claim
        return [lease.command for lease in expired if lease.outcome == "requeued"], next_at
