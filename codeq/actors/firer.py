"""The schedule firer: makes the tasks of recurring schedules when their time comes."""

from __future__ import annotations

import structlog

from codeq import metrics
from codeq.actors.base import tenant_failed
from codeq.actors.scheduler import Scheduler
from codeq.actors.sweeper import TenantSweeper
from codeq.domain import Unavailable
from codeq.schedules import DueSchedule, ScheduleSpec, plan_fire
from codeq.store.store import Store

log = structlog.get_logger("codeq.firer")


class ScheduleFirer(TenantSweeper):
    """Sleeps until the earliest next fire time of any tenant's schedules (the `schs`
    index), woken early by a PUT or resume on this daemon, and fires each due schedule
    with one script that makes its task and advances it (compare-and-set), so every
    daemon may fire at once and each fire time still makes one task. A schedule
    another daemon PUT is found within `max_idle_ms`."""

    name = "schedule firer"

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        *,
        max_attempts_default: int = 5,
        batch: int = 100,
        max_idle_ms: int = 1000,
    ) -> None:
        super().__init__(store, scheduler, batch=batch, max_idle_ms=max_idle_ms)
        self.max_attempts_default = max_attempts_default
        self._tenants: dict[str, str] = {}

    async def sweep_tenant(self, tag: str, now_ms: int) -> tuple[list[str], int | None]:
        due, earliest = await self.store.due_schedules(tag, now_ms=now_ms, batch=self.batch)
        ready: list[str] = []
        moved = False
        for schedule in due:
            try:
                command = await self._fire(tag, schedule, now_ms)
            except Unavailable:
                raise
            except Exception as exc:  # this schedule's fault (say a spec it cannot read)
                tenant_failed(self, tag, exc)
                continue
            moved = True
            if command is not None:
                ready.append(command)
        # what fired may be due again (a catch-up inside the grace); one that failed
        # waits for the next pass, not a busy loop
        return ready, now_ms if moved else earliest

    async def _fire(self, tag: str, due: DueSchedule, now_ms: int) -> str | None:
        """Fires one schedule; the command of the task it made (None: no task). Raises
        for a schedule it cannot fire (the others go on)."""
        spec = ScheduleSpec.from_json(due.spec_json)
        plan = plan_fire(spec, due.next_at_ms, now_ms)
        outcome, task_id = await self.store.fire_schedule(
            tag,
            due,
            spec,
            create=plan.create,
            task_fire_at_ms=plan.task_fire_at_ms,
            next_at_ms=plan.next_at_ms,
            missed=plan.missed,
            tenant=await self._tenant(tag),
            max_attempts=spec.max_attempts or self.max_attempts_default,
            now_ms=now_ms,
        )
        if outcome == "stale":  # another daemon fired it, or it was edited: read again
            return None
        metrics.SCHEDULE_LATENESS.observe(max(plan.lateness_ms, 0) / 1000)
        if plan.missed:
            metrics.SCHEDULE_MISFIRES.labels(spec.misfire).inc(plan.missed)
            log.warning(
                "schedule misfired",
                schedule=spec.name,
                missed=plan.missed,
                policy=spec.misfire,
                late_seconds=plan.lateness_ms / 1000,
            )
        if outcome != "created":
            return None
        on_time = plan.lateness_ms <= spec.misfire_grace_seconds * 1000
        metrics.SCHEDULE_FIRES.labels("on_time" if on_time else "catch_up").inc()
        metrics.TASK_CREATED.labels(spec.command).inc()
        log.info("schedule fired", schedule=spec.name, task_id=task_id, command=spec.command)
        return spec.command

    async def _tenant(self, tag: str) -> str:
        """The tenant name a task records (cached: it never changes for a tag)."""
        if tag not in self._tenants:
            self._tenants[tag] = await self.store.tenant_name(tag)
        return self._tenants[tag]
