"""The janitor: applies retention on its own, as the admin cleanup does on request."""

from __future__ import annotations

import functools
import time

import structlog

from codeq.actors.base import Actor, pause_after_error
from codeq.artifacts import ArtifactStore
from codeq.domain import Unavailable
from codeq.store.store import Store

log = structlog.get_logger("codeq.janitor")


class Janitor(Actor):
    """Every `interval_seconds`, deletes the terminal tasks of every tenant that ended
    more than `retention_seconds` ago, with their results, timelines, idempotency keys
    and DLQ entries. Each pass is bounded (`max_per_pass` index entries per tenant,
    in script calls of `batch`); what is left waits for the next pass. The cleanup
    script is atomic and idempotent, so every replica may run a janitor."""

    name = "janitor"

    def __init__(
        self,
        store: Store,
        *,
        interval_seconds: float,
        retention_seconds: int,
        batch: int = 1000,
        max_per_pass: int = 10_000,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.artifacts = artifacts
        self.interval_ms = interval_seconds * 1000
        self.retention_ms = retention_seconds * 1000
        self.batch = batch
        self.max_per_pass = max_per_pass
        self.passes = 0
        self.deleted = 0

    async def run(self) -> None:
        backoff = 0.1
        while True:
            started = time.time_ns() // 1_000_000
            try:
                deleted = await self.sweep(started)
            except Unavailable as exc:
                backoff = await pause_after_error(self, exc, backoff)
                continue
            backoff = 0.1
            self.passes += 1
            if deleted:
                log.info("retention applied", deleted=deleted)
            await self.sleep_until(started + self.interval_ms)

    async def sweep(self, now_ms: int) -> int:
        """One pass over every tenant; returns how many tasks it deleted."""
        before = now_ms - self.retention_ms
        deleted = 0
        for tag in await self.store.tenants():
            for _ in range(max(1, self.max_per_pass // self.batch)):
                n, more = await self.store.cleanup(tag, before_ms=before, limit=self.batch)
                deleted += n
                if not more:
                    break
            await self.store.prune_callbacks(tag, before_ms=before, limit=self.batch)
            if self.artifacts is not None:  # the files of tasks the store no longer has
                await self.artifacts.prune(tag, functools.partial(self.store.existing_tasks, tag))
        self.deleted += deleted
        return deleted
