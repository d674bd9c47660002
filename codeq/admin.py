"""The operator's API: queue stats, pause / resume / purge, task listings, ending a
stuck lease (requeue, fail), the DLQ (list, redrive) and retention cleanup. Every
operation needs the admin claim and is scoped to the caller's tenant; the store does
each state change in one script."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from codeq import metrics
from codeq.actors.scheduler import EVERY
from codeq.domain import (
    COMMAND_RE,
    TASK_ID_RE,
    Callback,
    DlqPage,
    DlqPosition,
    DlqQuery,
    Forbidden,
    Invalid,
    Principal,
    QueueStats,
    RedriveOutcome,
    RedriveRequest,
    Status,
    Task,
    TaskListQuery,
    TaskPage,
)
from codeq.store import keys

if TYPE_CHECKING:
    from codeq.actors.dispatcher import CallbackDispatcher
    from codeq.actors.scheduler import Scheduler
    from codeq.store.store import Store

# Most tasks one script call deletes or moves, so no call blocks the store for long.
BATCH = 1000
# Most DLQ entries one call looks at when filtering by error text.
SCAN_BUDGET = 5000
# A paced redrive moves about this many batches a second, so the rate is smooth.
PACED_BATCHES_PER_SECOND = 10
# How far a page of ready tasks looks for the last task of the page before, which
# claims (and abandons) move between two pages.
REALIGN_BUDGET = 1000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def require_admin(who: Principal) -> None:
    if not who.admin:
        raise Forbidden("an admin token is required (role=ADMIN or admin=true)")


def check_command(command: str) -> str:
    """A command name from a URL path, checked like a create's `command`."""
    if not COMMAND_RE.fullmatch(command):
        raise Invalid("command may only contain letters, digits and _ . : -", field="command")
    return command


class Admin:
    """Admin operations on the caller's tenant."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        *,
        retention_seconds: int,
        tag_for: Callable[[Principal, str], str],
        stopping: Callable[[], bool] = lambda: False,
        ended: Callable[[str], None] = lambda _id: None,
        dispatcher: CallbackDispatcher | None = None,
    ) -> None:
        """`tag_for` is the tenant tag of a task the caller may see (else NotFound),
        `ended` wakes the result long-polls of a task that just ended."""
        self.store = store
        self.scheduler = scheduler
        self.retention_ms = retention_seconds * 1000
        self.stopping = stopping
        self.tag_for = tag_for
        self.ended = ended
        self.dispatcher = dispatcher

    # ------------------------------------------------------------ stats

    async def queues(self, who: Principal) -> list[QueueStats]:
        """Stats of every command of the caller's tenant, in one round trip."""
        require_admin(who)
        return await self.store.queue_stats(keys.tenant_tag(who.tenant))

    async def queue(self, who: Principal, command: str) -> QueueStats:
        """Stats of one command (zeros for a command never seen, as codeQ)."""
        require_admin(who)
        [stats] = await self.store.queue_stats(
            keys.tenant_tag(who.tenant), [check_command(command)]
        )
        return stats

    # ------------------------------------------------------------ pause, resume, purge

    async def pause(self, who: Principal, command: str) -> None:
        require_admin(who)
        await self.store.pause(keys.tenant_tag(who.tenant), check_command(command))

    async def resume(self, who: Principal, command: str) -> None:
        require_admin(who)
        tag = keys.tenant_tag(who.tenant)
        if await self.store.resume(tag, check_command(command)):
            self.scheduler.became_ready(tag, command, EVERY)

    async def settings(self, who: Principal, command: str) -> tuple[int, str]:
        """The command's (maxInFlightPerKey, fairness)."""
        require_admin(who)
        return await self.store.queue_settings(keys.tenant_tag(who.tenant), check_command(command))

    async def set_settings(
        self, who: Principal, command: str, limit: int | None, fairness: str | None
    ) -> tuple[int, str]:
        """Sets them; blocked keys with a free slot under a raised limit are claimable
        again at once (the script announces them, waking every daemon's waiters)."""
        require_admin(who)
        tag = keys.tenant_tag(who.tenant)
        return await self.store.set_queue_settings(
            tag, check_command(command), limit=limit, fairness=fairness
        )

    async def purge(self, who: Principal, command: str) -> int:
        """Deletes every ready and delayed task of the command, one bounded batch per
        script call; in-progress and dead-lettered tasks stay."""
        require_admin(who)
        tag = keys.tenant_tag(who.tenant)
        check_command(command)
        total, more = 0, True
        while more:
            purged, more = await self.store.purge(tag, command, limit=BATCH)
            total += purged
        return total

    # ------------------------------------------------------------ tasks

    async def tasks(self, who: Principal, command: str, query: TaskListQuery) -> TaskPage:
        """One page of the command's tasks in one state, in the state's order (ready:
        claim order; the others oldest first by their index's time). Pages walk the
        live queue: a task that stays in the state through the walk is listed, and one
        that moves meanwhile may be listed twice or not at all. A page may hold fewer
        than `limit` tasks; the listing ends when the next cursor is None."""
        require_admin(who)
        return await self.store.task_page(
            keys.tenant_tag(who.tenant),
            check_command(command),
            query.state,
            start=query.cursor,
            limit=query.limit,
            budget=REALIGN_BUDGET,
        )

    async def requeue(self, who: Principal, task_id: str, reason: str) -> tuple[Task, bool]:
        """Ends the lease of an IN_PROGRESS task now and puts it back next in line, as
        its holder's abandon would (attempts kept); the holder's lease token is void.
        Returns the task and whether it was requeued (False: its cancel had been
        requested, so it ended CANCELLED)."""
        require_admin(who)
        tag = self.tag_for(who, task_id)
        task, requeued = await self.store.admin_requeue(
            tag, task_id, by=who.subject, reason=reason, now_ms=_now_ms()
        )
        if requeued:
            self.scheduler.became_ready(tag, task.command)
        else:
            metrics.TASK_COMPLETED.labels(task.command, "CANCELLED").inc()
            self.ended(task_id)
        return task, requeued

    async def fail(self, who: Principal, task_id: str, reason: str) -> Task:
        """Ends an IN_PROGRESS task now as FAILED, error "failed by admin: <reason>",
        as a FAILED result does (its result callback too); the holder's lease token is
        void."""
        require_admin(who)
        tag = self.tag_for(who, task_id)
        now = _now_ms()
        error = f"failed by admin: {reason}" if reason else "failed by admin"
        task, queued = await self.store.admin_fail(
            tag, task_id, by=who.subject, reason=reason, error=error, now_ms=now
        )
        metrics.TASK_COMPLETED.labels(task.command, Status.FAILED.value).inc()
        metrics.TASK_LATENCY.labels(task.command, Status.FAILED.value).observe(
            max(0, now - task.created_at_ms) / 1000
        )
        self.ended(task_id)
        if queued and self.dispatcher is not None:
            self.dispatcher.callback_queued()
        return task

    # ------------------------------------------------------------ retention

    async def cleanup(
        self, who: Principal, *, before_ms: int | None, limit: int
    ) -> tuple[int, int]:
        """Deletes up to `limit` terminal tasks whose retention expired before
        `before_ms` (default: now), as codeQ reads `before` — that is, tasks that
        ended more than the retention period before it — with their results,
        timelines, idempotency keys and DLQ entries. Returns how many it deleted and
        the end-time cutoff applied (`before` minus the retention period)."""
        require_admin(who)
        tag = keys.tenant_tag(who.tenant)
        before = (_now_ms() if before_ms is None else before_ms) - self.retention_ms
        deleted = 0
        while deleted < limit:
            n, more = await self.store.cleanup(
                tag, before_ms=before, limit=min(BATCH, limit - deleted)
            )
            deleted += n
            if not more:
                break
        await self.store.prune_callbacks(tag, before_ms=before, limit=BATCH)
        return deleted, before

    # ------------------------------------------------------------ result callbacks

    async def abandoned_callbacks(self, who: Principal, limit: int) -> list[Callback]:
        """The result callbacks given up on, newest first (kept for the retention
        period): what a receiver never got, with the last error."""
        require_admin(who)
        return await self.store.abandoned_callbacks(keys.tenant_tag(who.tenant), limit=limit)

    # ------------------------------------------------------------ DLQ

    async def dead_letters(self, who: Principal, command: str, query: DlqQuery) -> DlqPage:
        """One page of the command's DLQ, oldest first. A page may hold fewer than
        `limit` tasks when a filter is selective; the listing ends when the next
        cursor is None."""
        require_admin(who)
        check_command(command)
        now = _now_ms()
        lo = 0 if query.newer_than_seconds is None else now - query.newer_than_seconds * 1000
        hi = None if query.older_than_seconds is None else now - query.older_than_seconds * 1000
        start = DlqPosition(max(lo, 0), "")
        cursor = query.cursor
        if cursor is not None and cursor.score >= start.score:
            start = cursor
        if hi is not None and start.score > hi:
            return DlqPage([], None)
        return await self.store.dlq_page(
            keys.tenant_tag(who.tenant),
            check_command(command),
            start=start,
            max_score=hi,
            needle=(query.error or "").lower(),
            limit=query.limit,
            budget=SCAN_BUDGET,
        )

    async def redrive(self, who: Principal, command: str, req: RedriveRequest) -> RedriveOutcome:
        """Moves dead-lettered tasks back to ready with attempts reset, in batches of
        one script call each, paced to `rate_per_second` when given."""
        require_admin(who)
        check_command(command)
        for task_id in req.ids:
            if not TASK_ID_RE.fullmatch(task_id):
                raise Invalid(f"ids: invalid task id {task_id!r}", field="ids")
        run = _Redrive(self, keys.tenant_tag(who.tenant), command, who.subject, req)
        if req.ids:
            await run.by_ids(list(dict.fromkeys(req.ids)))
        else:
            await run.by_scan("" if req.all else (req.error or "").lower())
        return RedriveOutcome(ids=run.moved, skipped=run.skipped, dry_run=req.dry_run)


class _Redrive:
    """One redrive request: its batches, their pacing and what they moved."""

    def __init__(self, admin: Admin, tag: str, command: str, by: str, req: RedriveRequest) -> None:
        self.admin, self.tag, self.command, self.by, self.req = admin, tag, command, by, req
        self.pacer = _Pacer(None if req.dry_run else req.rate_per_second)
        self.moved: list[str] = []
        self.skipped: list[str] = []

    async def by_ids(self, ids: list[str]) -> None:
        size = self.pacer.batch
        for first in range(0, len(ids), size):
            if not await self._next_batch():
                return
            await self._batch(ids=ids[first : first + size])

    async def by_scan(self, needle: str) -> None:
        start: DlqPosition | None = DlqPosition(0, "")
        while start is not None and len(self.moved) < self.req.limit:
            if not await self._next_batch():
                return
            want = min(self.pacer.batch, self.req.limit - len(self.moved))
            start = await self._batch(scan=(start, needle, want, SCAN_BUDGET))

    async def _next_batch(self) -> bool:
        """Waits for the batch's turn; False when the daemon is shutting down."""
        if self.admin.stopping():
            return False
        await self.pacer.wait(len(self.moved))
        return True

    async def _batch(
        self, ids: list[str] | None = None, scan: tuple[DlqPosition, str, int, int] | None = None
    ) -> DlqPosition | None:
        moved, skipped, next_start = await self.admin.store.redrive(
            self.tag,
            self.command,
            ids=ids or (),
            scan=scan,
            dry_run=self.req.dry_run,
            by=self.by,
            now_ms=_now_ms(),
        )
        if moved and not self.req.dry_run:
            self.admin.scheduler.became_ready(self.tag, self.command, len(moved))
        self.moved += moved
        self.skipped += skipped
        return next_start


class _Pacer:
    """Spaces batches so that at most `rate` tasks a second move: about ten batches
    a second, each started no earlier than its share of the rate allows."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.batch = (
            BATCH
            if rate is None
            else max(1, min(BATCH, math.ceil(rate / PACED_BATCHES_PER_SECOND)))
        )
        self._started = asyncio.get_running_loop().time()

    async def wait(self, done: int) -> None:
        """Waits until `done` tasks are within the rate since the start."""
        if self.rate is None or done == 0:
            return
        delay = self._started + done / self.rate - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
