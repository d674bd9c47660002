"""The subscription cleaner: removes expired worker subscriptions."""

from __future__ import annotations

from codeq.actors.scheduler import Scheduler
from codeq.actors.sweeper import TenantSweeper
from codeq.store.store import Store


class SubscriptionCleaner(TenantSweeper):
    """Sweeps every tenant's expired subscriptions, at the earliest expiry or every
    `interval_seconds`. Expired subscriptions are never notified even before the
    cleaner gets to them (the notifier's lookup skips them), nor counted in
    `codeq_subscriptions_active` (read from the store at scrape time)."""

    name = "subscription cleaner"

    def __init__(
        self, store: Store, scheduler: Scheduler, *, interval_seconds: float, batch: int = 500
    ) -> None:
        super().__init__(store, scheduler, batch=batch, max_idle_ms=int(interval_seconds * 1000))
        self.removed = 0

    async def sweep_tenant(self, tag: str, now_ms: int) -> tuple[list[str], int | None]:
        removed, next_at = await self.store.expire_subscriptions(
            tag, now_ms=now_ms, batch=self.batch
        )
        self.removed += removed
        if removed >= self.batch:
            next_at = now_ms  # more may have expired: sweep again at once
        return [], next_at
