"""The service API every transport calls: create, claim, heartbeat, nack, abandon,
result, get. Business rules live here; the store does the state transitions."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeVar, cast

import structlog

from codeq import metrics
from codeq.admin import Admin
from codeq.artifacts import ArtifactStore, Staged
from codeq.domain import (
    OPAQUE_ID_RE,
    TASK_ID_RE,
    TERMINAL,
    Artifact,
    ClaimRequest,
    CodeqError,
    Conflict,
    Forbidden,
    HistoryEntry,
    InlineArtifact,
    Invalid,
    LeaseProof,
    NackOutcome,
    NewTask,
    NotFound,
    Principal,
    Result,
    ResultSubmission,
    RetryPolicy,
    Task,
)
from codeq.observability import LogBudget
from codeq.schedules import Schedules
from codeq.store import keys
from codeq.store.store import NewTaskRow, Recorded
from codeq.subscriptions import Subscriptions, SubscriptionSettings
from codeq.webhooks.guard import RefusedTarget, UrlGuard

T = TypeVar("T")

if TYPE_CHECKING:
    from codeq.actors.dispatcher import CallbackDispatcher
    from codeq.actors.mover import DelayedMover
    from codeq.actors.reaper import LeaseReaper
    from codeq.actors.scheduler import Scheduler
    from codeq.store.store import Store


def now_ms() -> int:
    """The daemon's clock in epoch ms; replicas are assumed NTP-synchronised."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """The parts of the configuration the service applies."""

    default_lease_seconds: int = 300
    max_attempts_default: int = 5
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    default_heartbeat_extend_seconds: int = 300
    retention_seconds: int = 86_400
    subscriptions: SubscriptionSettings = field(default_factory=SubscriptionSettings)


log = structlog.get_logger("codeq.service")


class Service:
    """The operations of codeq, independent of any transport."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        mover: DelayedMover,
        reaper: LeaseReaper,
        settings: ServiceSettings,
        *,
        guard: UrlGuard | None = None,
        dispatcher: CallbackDispatcher | None = None,
        artifacts: ArtifactStore | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.mover = mover
        self.reaper = reaper
        self.settings = settings
        self.guard = guard or UrlGuard()
        self.dispatcher = dispatcher
        self.artifacts = artifacts
        self.draining = False
        self._dead_letter_lines = LogBudget(per_minute=60)
        self._result_waiters: dict[str, set[asyncio.Event]] = {}
        self.subscriptions = Subscriptions(store, self.guard, settings.subscriptions)
        self.admin = Admin(
            store,
            scheduler,
            retention_seconds=settings.retention_seconds,
            stopping=lambda: self.draining,
            tag_for=self._tag_for,
            ended=self._ended,
            dispatcher=dispatcher,
        )
        self.schedules = Schedules(
            store,
            max_attempts_default=settings.max_attempts_default,
            became_ready=lambda tag, command: scheduler.became_ready(tag, command),
            check_webhook=self._check_webhook,
        )

    # ------------------------------------------------------------ producers

    async def create(self, who: Principal, new: NewTask) -> tuple[Task, bool]:
        """Creates a task; returns it and whether it is new (False: idempotent replay)."""
        self._check_webhook(new)
        tag = keys.tenant_tag(who.tenant)
        now = now_ms()
        row = self._row(tag, new, now)
        await self.store.register_tenant(tag, who.tenant)
        task, created = await self.store.create(
            tag,
            row.task_id,
            new,
            tenant=who.tenant,
            max_attempts=row.max_attempts,
            visible_at_ms=row.visible_at_ms,
            now_ms=now,
        )
        self._created(tag, [(row, created)], now)
        return task, created

    async def create_many(
        self, who: Principal, items: Sequence[NewTask | CodeqError]
    ) -> list[tuple[Task, bool] | CodeqError]:
        """Creates a batch of tasks in one store round trip. Items that already failed
        validation (or fail here, like a refused webhook) come back as their error, in
        place; the others as create() answers."""
        tag = keys.tenant_tag(who.tenant)
        now = now_ms()
        out: list[tuple[Task, bool] | CodeqError | None] = []
        rows: list[tuple[int, NewTaskRow]] = []
        for item in items:
            if isinstance(item, NewTask):
                try:
                    self._check_webhook(item)
                except Invalid as exc:
                    item = exc
            if isinstance(item, CodeqError):
                out.append(item)
            else:
                rows.append((len(out), self._row(tag, item, now)))
                out.append(None)  # the store's answer goes here
        if rows:
            await self.store.register_tenant(tag, who.tenant)
            replies = await self.store.create_many(
                tag, [row for _, row in rows], tenant=who.tenant, now_ms=now
            )
            for (position, _), reply in zip(rows, replies, strict=True):
                out[position] = reply
            self._created(
                tag, [(row, reply[1]) for (_, row), reply in zip(rows, replies, strict=True)], now
            )
        return _filled(out)

    def _check_webhook(self, new: NewTask) -> None:
        if new.webhook is not None:
            try:
                self.guard.check(new.webhook)
            except RefusedTarget as exc:
                raise Invalid(f"webhook refused: {exc}", field="webhook") from None

    def _row(self, tag: str, new: NewTask, now: int) -> NewTaskRow:
        return NewTaskRow(
            task_id=keys.new_task_id(tag),
            new=new,
            max_attempts=new.max_attempts or self.settings.max_attempts_default,
            visible_at_ms=self._visible_at(new, now),
        )

    def _created(self, tag: str, rows: Sequence[tuple[NewTaskRow, bool]], now: int) -> None:
        """Counts new tasks and tells the scheduler or the delayed mover about them."""
        ready: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for row, created in rows:
            if not created:
                continue
            counts[row.new.command] += 1
            if row.visible_at_ms > now:
                self.mover.due_at(row.visible_at_ms)
            else:
                ready[row.new.command] += 1
        for command, count in counts.items():
            metrics.TASK_CREATED.labels(command).inc(count)
        for command, count in ready.items():
            self.scheduler.became_ready(tag, command, count)

    @staticmethod
    def _visible_at(new: NewTask, now: int) -> int:
        """When the task becomes claimable: runAt wins over delaySeconds; 0 means now."""
        if new.run_at_ms is not None:
            return new.run_at_ms if new.run_at_ms > now else 0
        if new.delay_seconds:
            return now + int(new.delay_seconds * 1000)
        return 0

    async def get_task(self, who: Principal, task_id: str) -> Task:
        task = await self.store.get_task(self._tag_for(who, task_id), task_id)
        if task is None:
            raise NotFound("task not found")
        return task

    async def get_result(
        self, who: Principal, task_id: str, wait_seconds: float = 0.0
    ) -> tuple[Task, Result | None]:
        """A task and its result; with `wait_seconds`, long-polls until the task has
        ended (or the wait is over). An end recorded by this daemon wakes the wait at
        once; one recorded by another daemon is seen within a second."""
        tag = self._tag_for(who, task_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        woken = asyncio.Event()
        waiters = self._result_waiters.setdefault(task_id, set())
        waiters.add(woken)  # before the read, so an end right after it is not missed
        try:
            while True:
                task, result = await self.store.get_result(tag, task_id)
                if task is None:
                    raise NotFound("task not found")
                remaining = deadline - loop.time()
                if task.status in TERMINAL or remaining <= 0 or self.draining:
                    return task, result
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, 1.0)):
                        await woken.wait()
                woken.clear()
        finally:
            waiters.discard(woken)
            if not waiters:
                self._result_waiters.pop(task_id, None)

    def _ended(self, task_id: str) -> None:
        """A task ended here: wake the result long-polls waiting for it."""
        for woken in self._result_waiters.get(task_id, ()):
            woken.set()

    async def cancel(self, who: Principal, task_id: str, reason: str = "") -> tuple[Task, bool]:
        """Cancels a PENDING or delayed task at once, or asks the holder of an
        IN_PROGRESS one to stop (its nack, abandon or lease expiry then ends it as
        CANCELLED). Returns the task and whether it is CANCELLED now."""
        task, cancelled = await self.store.cancel(
            self._tag_for(who, task_id), task_id, by=who.subject, reason=reason, now_ms=now_ms()
        )
        if cancelled:
            metrics.TASK_COMPLETED.labels(task.command, "CANCELLED").inc()
            self._ended(task_id)
        return task, cancelled

    async def history(self, who: Principal, task_id: str) -> list[HistoryEntry]:
        tag = self._tag_for(who, task_id)
        if await self.store.get_task(tag, task_id) is None:
            raise NotFound("task not found")
        return await self.store.history(tag, task_id)

    # ------------------------------------------------------------ workers

    async def claim(
        self, who: Principal, req: ClaimRequest, gone: Callable[[], bool] | None = None
    ) -> Task | None:
        """Leases the next task, long-polling up to waitSeconds; None when none came."""
        tasks = await self.claim_many(who, req, count=1, gone=gone)
        return tasks[0] if tasks else None

    async def claim_many(
        self,
        who: Principal,
        req: ClaimRequest,
        count: int,
        gone: Callable[[], bool] | None = None,
    ) -> list[Task]:
        """Leases up to `count` tasks, long-polling until at least one is ready.

        `gone`: whether the caller has left (its connection closed). A long-poll
        whose caller left claims nothing when woken -- it hands the wake-up on to the
        next waiter -- and tasks leased just as it left are given back at once, so a
        dropped poll never strands a task until its lease ends."""
        _require_scope(who, "codeq:claim")
        commands = self._claimable(who, req.commands)
        tag = keys.tenant_tag(who.tenant)
        lease_ms = (req.lease_seconds or self.settings.default_lease_seconds) * 1000
        if self.draining:
            return []
        tasks = await self._claim_now(tag, commands, who, lease_ms, count)
        if tasks or req.wait_seconds <= 0:
            return tasks
        deadline = asyncio.get_running_loop().time() + req.wait_seconds
        async with self.scheduler.waiter(tag, commands) as waiter:
            while not self.draining:
                if gone is not None and gone():
                    waiter.pass_on()
                    return []
                tasks = await self._claim_now(tag, commands, who, lease_ms, count)
                if tasks:
                    waiter.pass_on()
                    return await self._unless_gone(who, tasks, gone)
                if not await waiter.wait(deadline):
                    break
        return []

    async def _unless_gone(
        self, who: Principal, tasks: list[Task], gone: Callable[[], bool] | None
    ) -> list[Task]:
        """The tasks, or none when the caller left while they were leased: then each
        is given back (next in line), as its holder would on an abandon."""
        if gone is None or not gone():
            return tasks
        tag = keys.tenant_tag(who.tenant)
        for task in tasks:  # not self.abandon: the token need not have codeq:abandon
            proof = LeaseProof(worker_id=who.subject, lease_token=task.lease_token)
            with contextlib.suppress(CodeqError):
                if await self.store.abandon(tag, task.id, proof, now_ms=now_ms()) is None:
                    self._ended(task.id)  # its cancel was requested: it ended CANCELLED
                else:
                    self.scheduler.became_ready(tag, task.command)
        log.info("claim's caller left; its tasks given back", tasks=[t.id for t in tasks])
        return []

    async def _claim_now(
        self, tag: str, commands: Sequence[str], who: Principal, lease_ms: int, count: int
    ) -> list[Task]:
        now = now_ms()
        tasks = await self.store.claim(
            tag,
            commands,
            worker_id=who.subject,
            lease_ms=lease_ms,
            token=secrets.token_urlsafe(12),
            count=count,
            now_ms=now,
        )
        if tasks:
            self.reaper.lease_ends_at(now + lease_ms)
            for command, count in Counter(task.command for task in tasks).items():
                metrics.TASK_CLAIMED.labels(command).inc(count)
        return tasks

    @staticmethod
    def _claimable(who: Principal, requested: Sequence[str]) -> tuple[str, ...]:
        """The commands a claim covers; () means every command of the tenant."""
        for command in requested:
            if not who.may_handle(command):
                raise Forbidden(f"command {command!r} is not in the token's eventTypes")
        if requested:
            return tuple(dict.fromkeys(requested))
        if "*" in who.event_types:
            return ()
        if not who.event_types:
            raise Forbidden("the token allows no eventTypes")
        return tuple(sorted(who.event_types))

    async def heartbeat(
        self, who: Principal, task_id: str, proof: LeaseProof, extend_seconds: int | None
    ) -> int:
        _require_scope(who, "codeq:heartbeat")
        extend_ms = (extend_seconds or self.settings.default_heartbeat_extend_seconds) * 1000
        now = now_ms()
        until = await self.store.heartbeat(
            self._tag_for(who, task_id), task_id, proof, extend_ms=extend_ms, now_ms=now
        )
        self.reaper.lease_ends_at(until)
        return until

    async def nack(
        self,
        who: Principal,
        task_id: str,
        proof: LeaseProof,
        delay_seconds: int | None,
        reason: str,
    ) -> NackOutcome:
        _require_scope(who, "codeq:nack")
        tag = self._tag_for(who, task_id)
        now = now_ms()
        outcome = await self.store.nack(
            tag,
            task_id,
            proof,
            delay_ms=None if delay_seconds is None else delay_seconds * 1000,
            retry=self.settings.retry,
            reason=reason,
            now_ms=now,
        )
        if outcome.cancelled:
            self._ended(task_id)
        if outcome.dead_lettered:
            self._ended(task_id)
            _count_finished(outcome.command, "FAILED", outcome.created_at_ms, now)
            if self._dead_letter_lines.allow():
                log.warning(
                    "task dead-lettered",
                    task_id=task_id,
                    command=outcome.command,
                    worker=who.subject,
                    reason=reason or "nack past maxAttempts",
                    not_logged_before=self._dead_letter_lines.suppressed() or None,
                )
            if self.dispatcher is not None:
                self.dispatcher.callback_queued()
        if not outcome.dead_lettered and not outcome.cancelled:
            if outcome.delay_seconds > 0:
                self.mover.due_at(now + outcome.delay_seconds * 1000)
            else:
                self.scheduler.became_ready(tag, outcome.command)
        return outcome

    async def abandon(self, who: Principal, task_id: str, proof: LeaseProof) -> str:
        """Gives a task back; returns "requeued", or "cancelled" when its cancel was
        requested."""
        _require_scope(who, "codeq:abandon")
        tag = self._tag_for(who, task_id)
        command = await self.store.abandon(tag, task_id, proof, now_ms=now_ms())
        if command is None:
            self._ended(task_id)
            return "cancelled"
        self.scheduler.became_ready(tag, command)
        return "requeued"

    async def submit_result(
        self, who: Principal, task_id: str, proof: LeaseProof, submission: ResultSubmission
    ) -> Result:
        _require_scope(who, "codeq:result")
        tag = self._tag_for(who, task_id)
        staged = await self._stage_artifacts(tag, task_id, submission)
        if staged is not None:
            submission = replace(submission, artifacts=_stored(submission, staged))
        now = now_ms()
        try:
            recorded = await self.store.submit_result(tag, task_id, proof, submission, now_ms=now)
        except (Conflict, Forbidden, NotFound, Invalid):
            if staged is not None:  # refused for sure: the files must not stay
                await self._artifacts().discard(staged)
            raise
        if staged is not None:  # (a timeout leaves them staged: pruned when stale)
            await self._artifacts().commit(staged)
        self._finished([recorded], now=now)
        return recorded.result

    async def _stage_artifacts(
        self, tag: str, task_id: str, submission: ResultSubmission
    ) -> Staged | None:
        inline = [a for a in submission.artifacts if isinstance(a, InlineArtifact)]
        if not inline:
            return None
        return await self._artifacts().stage(tag, task_id, inline)

    def _artifacts(self) -> ArtifactStore:
        if self.artifacts is None:
            raise Invalid("inline artifacts are not stored by this daemon", field="artifacts")
        return self.artifacts

    async def artifact(self, who: Principal, task_id: str, name: str) -> tuple[bytes, str]:
        """An inline artifact of a task of the caller's tenant: content and type."""
        tag = self._tag_for(who, task_id)
        found = await self.artifacts.read(tag, task_id, name) if self.artifacts else None
        if found is None:
            raise NotFound("artifact not found")
        return found

    async def submit_results(
        self, who: Principal, items: Sequence[tuple[str, str | None, ResultSubmission] | CodeqError]
    ) -> list[Result | CodeqError]:
        """Records a batch of results (task id, lease token, submission) in one store
        round trip; each item succeeds or fails on its own, in place."""
        _require_scope(who, "codeq:result")
        tag = keys.tenant_tag(who.tenant)
        now = now_ms()
        out: list[Result | CodeqError | None] = []
        valid: list[tuple[int, tuple[str, str | None, ResultSubmission]]] = []
        for item in items:
            if not isinstance(item, CodeqError):
                try:
                    self._tag_for(who, item[0])
                    if any(isinstance(a, InlineArtifact) for a in item[2].artifacts):
                        raise Invalid(
                            "inline artifacts (contentBase64) go to POST /tasks/{id}/result, "
                            "one result at a time",
                            field="artifacts",
                        )
                except CodeqError as exc:
                    item = exc
            if isinstance(item, CodeqError):
                out.append(item)
            else:
                valid.append((len(out), item))
                out.append(None)  # the store's answer goes here
        if valid:
            replies = await self.store.submit_results(
                tag, who.subject, [item for _, item in valid], now_ms=now
            )
            recorded = []
            for (position, _), reply in zip(valid, replies, strict=True):
                if isinstance(reply, CodeqError):
                    out[position] = reply
                else:
                    out[position] = reply.result
                    recorded.append(reply)
            self._finished(recorded, now=now)
        return _filled(out)

    def _finished(self, recorded: Sequence[Recorded], *, now: int) -> None:
        """Counts finished tasks and wakes the callback dispatcher if one was queued."""
        queued = False
        latencies: dict[tuple[str, str], list[float]] = {}
        for item in recorded:
            self._ended(item.result.task_id)
            key = (item.command, item.result.status.value)
            latencies.setdefault(key, []).append(max(0, now - item.created_at_ms) / 1000)
            queued = queued or item.callback_queued
        for (command, status), seconds in latencies.items():
            metrics.TASK_COMPLETED.labels(command, status).inc(len(seconds))
            histogram = metrics.TASK_LATENCY.labels(command, status)
            for value in seconds:
                histogram.observe(value)
        if queued and self.dispatcher is not None:
            self.dispatcher.callback_queued()

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _tag_for(who: Principal, task_id: str) -> str:
        """The caller's tenant tag, if the task ID routes there; another tenant's
        task is simply not found, so its existence does not leak."""
        if not OPAQUE_ID_RE.fullmatch(task_id):
            raise Invalid(
                "invalid task id: at most 64 letters, digits, '.', '_', '~' or '-'", field="id"
            )
        if not TASK_ID_RE.fullmatch(task_id):  # not one codeq minted (a UUID, say)
            raise NotFound("task not found")
        tag = keys.tenant_tag(who.tenant)
        if keys.tag_of(task_id) != tag:
            raise NotFound("task not found")
        return tag


def _stored(submission: ResultSubmission, staged: Staged) -> tuple[Artifact, ...]:
    """A result's artifacts with the inline ones replaced by their stored URLs."""
    by_name = {a.name: a for a in staged.artifacts}
    return tuple(
        by_name[a.name] if isinstance(a, InlineArtifact) else a for a in submission.artifacts
    )


def _filled(answers: list[T | None]) -> list[T]:
    """A batch's answers, once every slot holds one."""
    assert all(answer is not None for answer in answers)
    return cast(list[T], answers)


def _count_finished(command: str, status: str, created_at_ms: int, now: int) -> None:
    metrics.TASK_COMPLETED.labels(command, status).inc()
    metrics.TASK_LATENCY.labels(command, status).observe(max(0, now - created_at_ms) / 1000)


def _require_scope(who: Principal, scope: str) -> None:
    if not who.worker:
        raise Forbidden("a worker token is required")
    if scope not in who.scopes:
        raise Forbidden(f"the token lacks the {scope!r} scope", scope=scope)
