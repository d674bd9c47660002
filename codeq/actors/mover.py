"""The delayed mover: makes delayed tasks ready when their time comes."""

from __future__ import annotations

from codeq.actors.sweeper import TenantSweeper


class DelayedMover(TenantSweeper):
    """Moves due delayed tasks into the ready queues, on time: it sleeps until the
    earliest due time and is woken early when an earlier task arrives."""

    name = "delayed mover"

    async def sweep_tenant(self, tag: str, now_ms: int) -> tuple[list[str], int | None]:
        return await self.store.move_due(tag, now_ms=now_ms, batch=self.batch)
