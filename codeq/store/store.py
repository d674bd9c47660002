"""Typed access to the store: every state transition is one script call."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis import exceptions as rx
from redis.asyncio import Redis

from codeq import metrics
from codeq.domain import (
    Artifact,
    Callback,
    CodeqError,
    Conflict,
    DeadLetter,
    DeliveryMode,
    DlqPage,
    DlqPosition,
    ExpiredLease,
    Forbidden,
    HistoryEntry,
    Invalid,
    LeaseProof,
    NackOutcome,
    NewTask,
    NotFound,
    QueueStats,
    Result,
    ResultSubmission,
    RetryPolicy,
    Status,
    Subscription,
    Task,
    TaskPage,
    TaskState,
    Unavailable,
)
from codeq.schedules import (
    DueSchedule,
    Schedule,
    ScheduleSpec,
    schedule_from_fields,
)
from codeq.schedules import idempotency_key as schedule_key
from codeq.store import keys
from codeq.store.health import StoreHealth
from codeq.store.scripts import Scripts

log = structlog.get_logger("codeq.store")

_UNAVAILABLE = (rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError, OSError)
# How long a store's "out of memory" refusal keeps /readyz saying so, and how often
# it is logged while it lasts.
FULL_WINDOW_SECONDS = 10.0

_TASK_FIELDS = {
    "id",
    "command",
    "payload",
    "priority",
    "status",
    "attempts",
    "maxAttempts",
    "tenantId",
    "createdAt",
    "updatedAt",
    "webhook",
    "workerId",
    "leaseUntil",
    "leaseToken",
    "error",
    "runAt",
    "idempotencyKey",
    "traceParent",
    "traceState",
    "cancelRequested",
}


@dataclass(frozen=True, slots=True)
class NewTaskRow:
    """One task of a create: its new id, the request, and what the service decided."""

    task_id: str
    new: NewTask
    max_attempts: int
    visible_at_ms: int


@dataclass(frozen=True, slots=True)
class Recorded:
    """A result as recorded: with the task's command and creation time (for the
    processing-latency metric) and whether a result callback was queued."""

    result: Result
    command: str
    created_at_ms: int
    callback_queued: bool


def _lease_error(code: str) -> Exception:
    """The domain error for a lease check that failed inside a script."""
    if code == "not_found":
        return NotFound("task not found")
    if code == "not_owner":
        return Forbidden("task is leased to another worker")
    if code == "stale_token":
        return Conflict("lease token is stale: the task was claimed again since")
    if code == "cancelled":
        return Conflict("task was cancelled")
    if code.startswith("not_in_progress:"):
        status = code.partition(":")[2]
        return Conflict(f"task is {status}, not IN_PROGRESS", status=status)
    return RuntimeError(f"unexpected script reply {code!r}")


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def task_from_fields(fields: dict[str, str]) -> Task:
    """A Task from its stored hash fields."""
    return Task(
        id=fields["id"],
        command=fields["command"],
        payload=fields.get("payload") or "{}",
        priority=int(fields.get("priority") or 0),
        status=Status(fields["status"]),
        attempts=int(fields.get("attempts") or 0),
        max_attempts=int(fields.get("maxAttempts") or 0),
        tenant_id=fields.get("tenantId", ""),
        created_at_ms=int(fields["createdAt"]),
        updated_at_ms=int(fields["updatedAt"]),
        webhook=fields.get("webhook") or None,
        worker_id=fields.get("workerId") or None,
        lease_until_ms=_int(fields.get("leaseUntil")),
        lease_token=fields.get("leaseToken") or None,
        error=fields.get("error") or None,
        run_at_ms=_int(fields.get("runAt")),
        idempotency_key=fields.get("idempotencyKey") or None,
        trace_parent=fields.get("traceParent") or None,
        trace_state=fields.get("traceState") or None,
        cancel_requested=fields.get("cancelRequested") == "1",
        extra={k: v for k, v in fields.items() if k not in _TASK_FIELDS},
    )


def _position(score: Any, task_id: str) -> DlqPosition | None:
    """A DLQ position from a script reply; a negative score means the end."""
    return DlqPosition(int(score), task_id) if int(score) >= 0 else None


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


class Store:
    """The only code that speaks to the store. Methods take the tenant tag and return
    domain objects; lease failures come back as domain errors."""

    def __init__(
        self,
        redis: Redis,
        *,
        origin: str,
        history_limit: int = 32,
        idempotency_ttl_ms: int = 86_400_000,
        timed: bool = True,
        timeout: float | None = None,
    ) -> None:
        self.redis = redis
        self._timed = timed
        self._timeout = timeout
        self.origin = origin
        self._history_limit = history_limit
        self._idempotency_ttl_ms = idempotency_ttl_ms
        self._scripts = Scripts(redis)
        self._known_tenants: set[str] = set()
        self._health = StoreHealth(timeout, redis.ping) if timeout else None
        self._full_at = -FULL_WINDOW_SECONDS  # monotonic time of the last OOM refusal
        self._full_logged_at = -FULL_WINDOW_SECONDS

    def full(self) -> bool:
        """Whether the store refused a write for want of memory in the last seconds."""
        return time.monotonic() - self._full_at < FULL_WINDOW_SECONDS

    def _out_of_memory(self, exc: rx.ResponseError) -> Unavailable | None:
        """A store at maxmemory (noeviction) refuses writes with OOM: that is the store
        being unavailable (503, logged once per window), not a bug (500). None for
        any other error reply."""
        # redis-py turns the OOM reply into OutOfMemoryError; inside a script's error
        # reply it stays text
        if not (isinstance(exc, rx.OutOfMemoryError) or "used memory > 'maxmemory'" in str(exc)):
            return None
        now = time.monotonic()
        self._full_at = now
        if now - self._full_logged_at >= FULL_WINDOW_SECONDS:
            self._full_logged_at = now
            log.error("store is out of memory: writes are refused", error=str(exc))
        return Unavailable("store is out of memory (maxmemory reached); nothing was written")

    @asynccontextmanager
    async def _reachable(self) -> AsyncIterator[None]:
        """Bounds a store operation and turns the store being down, hung or full into
        the domain's Unavailable (a 503, never a 500). The bound is the store's
        progress (StoreHealth: some answer every storeTimeoutSeconds while operations
        are in flight), plus a generous one of the operation's own.

        The bound is here rather than redis-py's socket_timeout, which on Python 3.11
        wraps every read in asyncio.wait_for (a task per command, a fifth of a bare
        request's cost). redis-py drops a connection whose command was cancelled, so a
        late reply is never read by the next command."""
        health = self._health
        try:
            async with asyncio.timeout(health.operation_bound if health else None) as scope:
                answered = False
                if health is not None:
                    health.begin(scope)
                try:
                    yield
                    answered = True
                except rx.ResponseError:
                    answered = True
                    raise
                finally:
                    if health is not None:
                        health.end(scope, answered=answered)
        except (TimeoutError, *_UNAVAILABLE, rx.ResponseError) as exc:
            if (failure := self._failure(exc)) is exc:
                raise
            raise failure from exc

    def _failure(self, exc: Exception) -> Exception:
        """What a failed store operation means to the caller."""
        if isinstance(exc, TimeoutError):
            health = self._health
            if health is None or health.down:
                return Unavailable(f"store did not answer within {self._timeout:g}s")
            return Unavailable(
                f"store operation not done within {health.operation_bound:g}s"
                " (the store answers others: this daemon is overloaded)"
            )
        if isinstance(exc, _UNAVAILABLE):
            return Unavailable(f"store unavailable: {exc}")
        if isinstance(exc, rx.ResponseError) and (full := self._out_of_memory(exc)):
            return full
        return exc

    async def connect(self) -> None:
        """Checks the store answers and loads the scripts."""
        async with self._reachable():
            await self.redis.ping()
            await self._scripts.load(self.redis)

    async def close(self) -> None:
        if self._health is not None:
            await self._health.close()
        await self.redis.aclose()

    async def ping(self) -> bool:
        async with self._reachable():
            return bool(await self.redis.ping())

    async def _call(self, name: str, tag: str, *args: Any) -> Any:
        """Runs a script: _reachable() spelled out, as this is every operation's path."""
        started = time.perf_counter()
        health = self._health
        try:
            async with asyncio.timeout(health.operation_bound if health else None) as scope:
                answered = False
                if health is not None:
                    health.begin(scope)
                try:
                    reply = await self._scripts(name, keys.prefix(tag), *args)
                    answered = True
                except rx.ResponseError:
                    answered = True
                    raise
                finally:
                    if health is not None:
                        health.end(scope, answered=answered)
        except (TimeoutError, *_UNAVAILABLE, rx.ResponseError) as exc:
            if (failure := self._failure(exc)) is exc:
                raise
            raise failure from exc
        if self._timed:
            metrics.store_latency(name).observe(time.perf_counter() - started)
        return reply

    async def tenant_name(self, tag: str) -> str:
        """The tenant a tag stands for (as registered by its first write)."""
        async with self._reachable():
            name = await self.redis.hget(keys.meta(tag), "tenant")
        return str(name) if name else tag

    # ------------------------------------------------------------ tenants

    async def register_tenant(self, tag: str, tenant: str) -> None:
        """Makes a tenant discoverable by the actors that sweep every tenant.

        Runs before the tenant's first write (idempotent), so no task can exist in a
        tenant the delayed mover and lease reaper do not know about.
        """
        if tag in self._known_tenants:
            return
        async with self._reachable(), self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.TENANTS, tag)
            pipe.hset(keys.meta(tag), "tenant", tenant)
            await pipe.execute()
        self._known_tenants.add(tag)

    async def tenants(self) -> list[str]:
        async with self._reachable():
            members: set[str] = await self.redis.smembers(keys.TENANTS)  # type: ignore[assignment]
            return sorted(members)

    # ------------------------------------------------------------ transitions

    async def create(
        self,
        tag: str,
        task_id: str,
        new: NewTask,
        *,
        tenant: str,
        max_attempts: int,
        visible_at_ms: int,
        now_ms: int,
    ) -> tuple[Task, bool]:
        """Stores a task, ready or delayed. Returns the task and whether it is new
        (False: the idempotency key named an existing task, which is returned)."""
        digest = keys.idempotency_digest(new.idempotency_key) if new.idempotency_key else ""
        reply = await self._call(
            "create",
            tag,
            task_id,
            new.command,
            new.payload,
            new.priority,
            max_attempts,
            new.webhook or "",
            digest,
            self._idempotency_ttl_ms,
            now_ms,
            visible_at_ms,
            self._history_limit,
            self.origin,
            new.trace_parent or "",
            new.trace_state or "",
            tenant,
            new.idempotency_key or "",
            new.concurrency_key or "",
        )
        return _created(
            reply, NewTaskRow(task_id, new, max_attempts, visible_at_ms), tenant, now_ms
        )

    async def create_many(
        self, tag: str, rows: Sequence[NewTaskRow], *, tenant: str, now_ms: int
    ) -> list[tuple[Task, bool]]:
        """Stores many tasks of one tenant in one round trip; per task as create()."""
        # Every value as a string, so the script stores exactly what create() would.
        batch = [
            [
                row.task_id,
                row.new.command,
                row.new.payload,
                str(row.new.priority),
                str(row.max_attempts),
                row.new.webhook or "",
                keys.idempotency_digest(row.new.idempotency_key) if row.new.idempotency_key else "",
                str(row.visible_at_ms),
                row.new.trace_parent or "",
                row.new.trace_state or "",
                row.new.idempotency_key or "",
                row.new.concurrency_key or "",
            ]
            for row in rows
        ]
        args = (now_ms, self._idempotency_ttl_ms, self._history_limit, self.origin, tenant)
        replies = await self._call("create_batch", tag, *args, orjson.dumps(batch))
        return [
            _created(reply, row, tenant, now_ms) for reply, row in zip(replies, rows, strict=True)
        ]

    async def claim(
        self,
        tag: str,
        commands: Iterable[str],
        *,
        worker_id: str,
        lease_ms: int,
        token: str,
        count: int,
        now_ms: int,
    ) -> list[Task]:
        """Leases up to `count` ready tasks; highest tier first, oldest first."""
        reply = await self._call(
            "claim",
            tag,
            now_ms,
            lease_ms,
            worker_id,
            token,
            self._history_limit,
            count,
            *commands,
        )
        return [task_from_fields(_pairs(flat)) for flat in reply]

    async def heartbeat(
        self, tag: str, task_id: str, proof: LeaseProof, *, extend_ms: int, now_ms: int
    ) -> int:
        """Extends a lease; returns the new lease end (ms)."""
        reply = await self._call(
            "heartbeat", tag, task_id, now_ms, extend_ms, proof.worker_id, proof.lease_token or ""
        )
        if reply[0] != "ok":
            raise _lease_error(reply[0])
        return int(reply[1])

    async def nack(
        self,
        tag: str,
        task_id: str,
        proof: LeaseProof,
        *,
        delay_ms: int | None,
        retry: RetryPolicy,
        reason: str,
        now_ms: int,
    ) -> NackOutcome:
        """Gives a task back as failed: retried after a delay or dead-lettered."""
        reply = await self._call(
            "nack",
            tag,
            task_id,
            now_ms,
            proof.worker_id,
            proof.lease_token or "",
            -1 if delay_ms is None else delay_ms,
            retry.policy.value,
            retry.base_ms,
            retry.max_ms,
            random.random(),
            reason,
            self._history_limit,
            self.origin,
        )
        if reply[0] == "dead_lettered":
            return NackOutcome(
                dead_lettered=True, delay_seconds=0, command=reply[1], created_at_ms=int(reply[2])
            )
        if reply[0] == "cancelled":
            return NackOutcome(dead_lettered=False, delay_seconds=0, cancelled=True)
        if reply[0] != "requeued":
            raise _lease_error(reply[0])
        return NackOutcome(
            dead_lettered=False, delay_seconds=round(int(reply[1]) / 1000), command=reply[2]
        )

    async def abandon(
        self, tag: str, task_id: str, proof: LeaseProof, *, now_ms: int
    ) -> str | None:
        """Gives a task back untouched, next in line; returns its command, or None when
        the task's cancel was requested and it ended CANCELLED instead."""
        reply = await self._call(
            "abandon",
            tag,
            task_id,
            now_ms,
            proof.worker_id,
            proof.lease_token or "",
            self._history_limit,
            self.origin,
        )
        if reply[0] == "cancelled":
            return None
        if reply[0] != "requeued":
            raise _lease_error(reply[0])
        return str(reply[1])

    async def submit_result(
        self,
        tag: str,
        task_id: str,
        proof: LeaseProof,
        submission: ResultSubmission,
        *,
        now_ms: int,
    ) -> Recorded:
        """Records a task's terminal outcome, exactly once."""
        result = _result_of(task_id, submission, now_ms)
        reply = await self._call(
            "result",
            tag,
            task_id,
            now_ms,
            proof.worker_id,
            proof.lease_token or "",
            submission.status.value,
            orjson.dumps(result_record(result)),
            submission.error or "",
            self._history_limit,
        )
        return _recorded(reply, result)

    async def submit_results(
        self,
        tag: str,
        worker_id: str,
        items: Sequence[tuple[str, str | None, ResultSubmission]],
        *,
        now_ms: int,
    ) -> list[Recorded | CodeqError]:
        """Records many outcomes (task id, lease token, submission) of one tenant's
        tasks in one round trip; each item is its own Recorded or domain error."""
        results, batch = [], []
        for task_id, token, submission in items:
            result = _result_of(task_id, submission, now_ms)
            results.append(result)
            record = orjson.dumps(result_record(result)).decode()
            batch.append(
                [task_id, token or "", submission.status.value, record, submission.error or ""]
            )
        replies = await self._call(
            "result_batch", tag, now_ms, worker_id, self._history_limit, orjson.dumps(batch)
        )
        out: list[Recorded | CodeqError] = []
        for reply, result in zip(replies, results, strict=True):
            try:
                out.append(_recorded(reply, result))
            except CodeqError as exc:
                out.append(exc)
        return out

    async def reap(
        self, tag: str, *, now_ms: int, batch: int, retry: RetryPolicy
    ) -> tuple[list[ExpiredLease], int | None]:
        """Retries or dead-letters expired leases; returns what became of each and
        the next lease expiry (ms) in the tenant."""
        reply = await self._call(
            "reap",
            tag,
            now_ms,
            batch,
            retry.policy.value,
            retry.base_ms,
            retry.max_ms,
            random.random(),
            self._history_limit,
            self.origin,
        )
        fields = reply[2:]  # five per expired lease
        expired = [
            ExpiredLease(fields[k], fields[k + 1], fields[k + 2], int(fields[k + 3]), fields[k + 4])
            for k in range(0, len(fields), 5)
        ]
        return expired, (int(reply[1]) if int(reply[1]) >= 0 else None)

    async def move_due(self, tag: str, *, now_ms: int, batch: int) -> tuple[list[str], int | None]:
        """Makes due delayed tasks ready; returns their commands and the next due time."""
        reply = await self._call("move_due", tag, now_ms, batch, self.origin)
        return list(reply[2:]), (int(reply[1]) if int(reply[1]) >= 0 else None)

    # ------------------------------------------------------------ cancel and admin

    async def cancel(
        self, tag: str, task_id: str, *, by: str, reason: str, now_ms: int
    ) -> tuple[Task, bool]:
        """Cancels a waiting task, or asks the holder of a leased one to stop. Returns
        the task and whether it ended now (False: cancel requested)."""
        reply = await self._call("cancel", tag, task_id, now_ms, by, reason, self._history_limit)
        if reply[0] == "not_found":
            raise NotFound("task not found")
        if reply[0] == "terminal":
            status = reply[1]
            raise Conflict(f"task is already {status}", status=status)
        return task_from_fields(_pairs(reply[1])), reply[0] == "cancelled"

    async def queue_stats(self, tag: str, commands: Sequence[str] = ()) -> list[QueueStats]:
        """The counts of the named queues (every queue of the tenant when none)."""
        reply = await self._call("stats", tag, *commands)
        return [
            QueueStats(
                command=row[0],
                ready=int(row[1]),
                delayed=int(row[2]),
                in_progress=int(row[3]),
                dlq=int(row[4]),
                paused=bool(int(row[5])),
                oldest_ready_ms=int(row[6]) or None,
            )
            for row in reply
        ]

    async def cleanup(self, tag: str, *, before_ms: int, limit: int) -> tuple[int, bool]:
        """Deletes up to `limit` terminal tasks that ended before `before_ms`; returns
        how many it deleted and whether more may be past the cutoff."""
        deleted, more = await self._call("cleanup", tag, before_ms, limit)
        return int(deleted), bool(int(more))

    async def queue_settings(self, tag: str, command: str) -> tuple[int, str]:
        """A command's key settings: (maxInFlightPerKey, 0 = none; fairness, '' = none)."""
        async with self._reachable():
            limit, fairness = await self.redis.hmget(
                keys.queue_settings(tag, command), ["maxInFlightPerKey", "fairness"]
            )
        return int(limit or 0), str(fairness or "")

    async def set_queue_settings(
        self, tag: str, command: str, *, limit: int | None, fairness: str | None
    ) -> tuple[int, str]:
        """Sets a command's key settings (None: unchanged); returns them as stored."""
        limit_arg = "-" if limit is None else limit
        fairness_arg = "-" if fairness is None else fairness
        stored, mode = await self._call("queue_settings", tag, command, limit_arg, fairness_arg)
        return int(stored), mode

    async def pause(self, tag: str, command: str) -> None:
        await self._call("pause", tag, command)

    async def resume(self, tag: str, command: str) -> int:
        """Lets claims take the command's tasks again; returns how many are ready."""
        _, ready = await self._call("resume", tag, command, self.origin)
        return int(ready)

    async def purge(self, tag: str, command: str, *, limit: int) -> tuple[int, bool]:
        """Deletes up to `limit` ready or delayed tasks of a command; returns how many
        and whether more may remain."""
        purged, more = await self._call("purge", tag, command, limit)
        return int(purged), bool(int(more))

    async def dlq_page(
        self,
        tag: str,
        command: str,
        *,
        start: DlqPosition,
        max_score: int | None,
        needle: str,
        limit: int,
        budget: int,
    ) -> DlqPage:
        """Up to `limit` dead-lettered tasks after `start` (exclusive; an empty task ID
        starts at its score), dead-lettered at or before `max_score`, whose error
        contains `needle` (lowercase), looking at no more than `budget` entries."""
        reply = await self._call(
            "dlq_page",
            tag,
            command,
            start.score,
            start.task_id,
            "+inf" if max_score is None else max_score,
            needle,
            limit,
            budget,
        )
        items = [
            DeadLetter(task_from_fields(_pairs(fields)), int(score)) for score, fields in reply[2:]
        ]
        return DlqPage(items, _position(reply[0], reply[1]))

    async def task_page(
        self,
        tag: str,
        command: str,
        state: TaskState,
        *,
        start: DlqPosition | None,
        limit: int,
        budget: int,
    ) -> TaskPage:
        """Up to `limit` tasks of a command in `state` after `start` (the position of
        the last task listed; None: from the first), reading a window of the state's
        index; a ready walk looks at no more than `budget` entries to find its place."""
        reply = await self._call(
            "task_page",
            tag,
            command,
            state.value,
            "" if start is None else start.score,
            "" if start is None else start.task_id,
            limit,
            budget,
        )
        tasks = [task_from_fields(_pairs(fields)) for fields in reply[2:]]
        return TaskPage(tasks, _position(reply[0], reply[1]))

    async def admin_requeue(
        self, tag: str, task_id: str, *, by: str, reason: str, now_ms: int
    ) -> tuple[Task, bool]:
        """Ends the lease of an IN_PROGRESS task and puts it back next in line.
        Returns the task and whether it was requeued (False: its cancel had been
        requested, and it ended CANCELLED)."""
        reply = await self._call(
            "admin_requeue", tag, task_id, now_ms, by, reason, self._history_limit, self.origin
        )
        if reply[0] not in ("requeued", "cancelled"):
            raise _lease_error(reply[0])
        return task_from_fields(_pairs(reply[1])), reply[0] == "requeued"

    async def admin_fail(
        self, tag: str, task_id: str, *, by: str, reason: str, error: str, now_ms: int
    ) -> tuple[Task, bool]:
        """Ends an IN_PROGRESS task as FAILED with `error`, as a FAILED result does.
        Returns the task and whether a result callback was queued."""
        result = Result(
            task_id=task_id,
            status=Status.FAILED,
            result=None,
            error=error,
            artifacts=(),
            completed_at_ms=now_ms,
        )
        reply = await self._call(
            "admin_fail",
            tag,
            task_id,
            now_ms,
            by,
            reason,
            error,
            orjson.dumps(result_record(result)),
            self._history_limit,
        )
        if reply[0] != "failed":
            raise _lease_error(reply[0])
        return task_from_fields(_pairs(reply[2])), bool(int(reply[1]))

    async def redrive(
        self,
        tag: str,
        command: str,
        *,
        ids: Sequence[str] = (),
        scan: tuple[DlqPosition, str, int, int] | None = None,
        dry_run: bool,
        by: str,
        now_ms: int,
    ) -> tuple[list[str], list[str], DlqPosition | None]:
        """Moves dead-lettered tasks back to ready: the named `ids`, or those a DLQ walk
        finds (`scan` = start, error needle, most tasks, most entries to look at).
        Returns the ids moved (or that would move, in a dry run), the ids skipped (not
        in this DLQ) and, for a walk, where to continue (None at the end)."""
        if scan is None:
            mode: tuple[Any, ...] = ("ids", *ids)
        else:
            start, needle, want, budget = scan
            mode = ("scan", start.score, start.task_id, needle, want, budget)
        moved, skipped, score, task_id = await self._call(
            "redrive",
            tag,
            command,
            now_ms,
            1 if dry_run else 0,
            by,
            self._history_limit,
            self.origin,
            *mode,
        )
        return list(moved), list(skipped), _position(score, task_id)

    # ------------------------------------------------------------ rate limits

    async def take_tokens(
        self,
        token: str,
        scope: str,
        *,
        per_second: float,
        burst: int,
        cost: int = 1,
        now_ms: int,
    ) -> int | None:
        """Takes `cost` tokens from the bucket of a bearer token and scope; None when
        taken, else the milliseconds until enough tokens are there (nothing taken)."""
        async with self._reachable():
            allowed, wait_ms = await self._scripts(
                "ratelimit",
                keys.rate_limit(token, scope),
                now_ms,
                per_second / 1000,
                burst,
                cost,
            )
        return None if int(allowed) else max(1, int(wait_ms))

    # ------------------------------------------------------------ subscriptions

    async def subscribe(self, tag: str, sub: Subscription, *, ttl_ms: int) -> None:
        """Stores a subscription, indexed under each of its commands."""
        await self._call(
            "subscribe",
            tag,
            sub.id,
            sub.created_at_ms,
            sub.expires_at_ms,
            sub.callback_url,
            sub.delivery_mode.value,
            sub.group_id or "",
            int(sub.min_interval_seconds * 1000),
            sub.worker_id,
            ttl_ms,
            *sub.event_types,
        )

    async def renew_subscription(
        self, tag: str, subscription_id: str, *, worker_id: str, ttl_ms: int, now_ms: int
    ) -> int:
        """Extends a live subscription of `worker_id`; returns its new expiry (ms)."""
        reply = await self._call("sub_renew", tag, subscription_id, now_ms, ttl_ms, worker_id)
        _subscription_error(reply[0])
        return int(reply[1])

    async def unsubscribe(
        self, tag: str, subscription_id: str, *, worker_id: str, now_ms: int
    ) -> None:
        reply = await self._call("unsubscribe", tag, subscription_id, now_ms, worker_id)
        _subscription_error(reply[0])

    async def subscriptions(self, tag: str, *, now_ms: int) -> list[Subscription]:
        """The tenant's live subscriptions, soonest to expire first."""
        async with self._reachable():
            ids: list[str] = await self.redis.zrangebyscore(  # type: ignore[assignment]
                keys.subscriptions(tag), f"({now_ms}", "+inf"
            )
            async with self.redis.pipeline(transaction=False) as pipe:
                for subscription_id in ids:
                    pipe.hgetall(keys.subscription(tag, subscription_id))
                rows = await pipe.execute() if ids else []
        return [subscription_from_fields(row) for row in rows if row]

    async def expire_subscriptions(
        self, tag: str, *, now_ms: int, batch: int
    ) -> tuple[int, int | None]:
        """Removes expired subscriptions; returns how many and the next expiry (ms)."""
        reply = await self._call("sub_expire", tag, now_ms, batch)
        return int(reply[0]), (int(reply[1]) if int(reply[1]) >= 0 else None)

    async def subscription_counts(self, tag: str, *, now_ms: int) -> dict[str, int]:
        """The live subscriptions of the tenant, per command ('*' for every command)."""
        reply = await self._call("sub_counts", tag, now_ms)
        return {reply[i]: int(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def pick_subscribers(
        self, tag: str, command: str, *, now_ms: int, seed: int, rr_ttl_ms: int = 86_400_000
    ) -> tuple[int, list[tuple[str, str]]]:
        """The subscriptions to notify that `command` has work (delivery modes and
        minInterval gates applied in the store); returns the ready depth and
        (subscription id, callback URL) pairs."""
        reply = await self._call("notify_pick", tag, command, now_ms, seed, rr_ttl_ms)
        picks = [(reply[i], reply[i + 1]) for i in range(1, len(reply), 2)]
        return int(reply[0]), picks

    # ------------------------------------------------------------ result callbacks

    async def claim_callbacks(
        self, tag: str, *, now_ms: int, limit: int, inflight_ms: int, token: str
    ) -> tuple[list[Callback], int | None]:
        """Takes up to `limit` due callbacks for delivery (each counts an attempt);
        returns them and the next due time (ms) of the tenant's outbox."""
        reply = await self._call("outbox_claim", tag, now_ms, limit, inflight_ms, token)
        callbacks = [callback_from_fields(_pairs(flat)) for flat in reply[1:]]
        return callbacks, (int(reply[0]) if int(reply[0]) >= 0 else None)

    async def settle_callback(
        self,
        tag: str,
        callback: Callback,
        outcome: str,
        *,
        now_ms: int,
        next_at_ms: int = 0,
        error: str = "",
    ) -> bool:
        """Records a delivery's outcome (delivered, retry, defer, abandon); False when
        another daemon had taken the callback over meanwhile."""
        reply = await self._call(
            "outbox_settle", tag, callback.id, callback.claim, outcome, now_ms, next_at_ms, error
        )
        return bool(reply[0] == "ok")

    async def abandoned_callbacks(self, tag: str, *, limit: int) -> list[Callback]:
        """The tenant's abandoned callbacks, newest first."""
        async with self._reachable():
            ids: list[str] = await self.redis.zrevrange(  # type: ignore[assignment]
                keys.abandoned_callbacks(tag), 0, limit - 1
            )
            async with self.redis.pipeline(transaction=False) as pipe:
                for callback_id in ids:
                    pipe.hgetall(keys.callback(tag, callback_id))
                rows = await pipe.execute() if ids else []
        return [callback_from_fields(row) for row in rows if row]

    async def prune_callbacks(self, tag: str, *, before_ms: int, limit: int) -> int:
        """Removes callbacks abandoned before `before_ms` (retention)."""
        return int(await self._call("outbox_prune", tag, before_ms, limit))

    async def outbox_depth(self, tag: str) -> int:
        async with self._reachable():
            return int(await self.redis.zcard(keys.outbox(tag)))

    # ------------------------------------------------------------ schedules

    async def put_schedule(
        self, tag: str, spec: ScheduleSpec, *, next_at_ms: int | None, now_ms: int
    ) -> bool:
        """Creates or replaces a schedule; True when it is new."""
        reply = await self._call(
            "schedule_put", tag, spec.name, spec.to_json(), _ms_or_blank(next_at_ms), now_ms
        )
        return bool(reply[0] == "created")

    async def schedule(self, tag: str, name: str) -> Schedule | None:
        async with self._reachable():
            fields: dict[str, str] = await self.redis.hgetall(keys.schedule(tag, name))  # type: ignore[assignment]
        return schedule_from_fields(fields) if fields.get("spec") else None

    async def schedules(self, tag: str) -> list[Schedule]:
        """Every schedule of a tenant, by name."""
        async with self._reachable():
            members: set[str] = await self.redis.smembers(keys.schedule_names(tag))  # type: ignore[assignment]
            names = sorted(members)
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(keys.schedule(tag, name))
                rows = await pipe.execute() if names else []
        return [schedule_from_fields(row) for row in rows if row.get("spec")]

    async def delete_schedule(self, tag: str, name: str) -> bool:
        return bool(await self._call("schedule_delete", tag, name))

    async def set_schedule_paused(
        self, tag: str, name: str, *, paused: bool, next_at_ms: int | None, version: int | None
    ) -> bool:
        """Pauses or resumes; False when the version moved (read again)."""
        reply = await self._call(
            "schedule_pause",
            tag,
            name,
            1 if paused else 0,
            _ms_or_blank(next_at_ms),
            "" if version is None else version,
        )
        if reply == "not_found":
            raise NotFound(f"no schedule named {name!r}")
        return bool(reply == "ok")

    async def due_schedules(
        self, tag: str, *, now_ms: int, batch: int
    ) -> tuple[list[DueSchedule], int | None]:
        """The schedules whose fire time has come, and the earliest fire time after
        now of the tenant's other active schedules (None: none)."""
        reply = await self._call("schedule_due", tag, now_ms, batch)
        earliest = int(float(reply[0])) if reply[0] != "" else None
        due = [
            DueSchedule(name, spec, int(next_at), int(version))
            for name, spec, next_at, version in zip(*[iter(reply[1:])] * 4, strict=True)
            if next_at != ""
        ]
        return due, earliest

    async def fire_schedule(
        self,
        tag: str,
        due: DueSchedule,
        spec: ScheduleSpec,
        *,
        create: bool,
        task_fire_at_ms: int,
        next_at_ms: int | None,
        missed: int,
        tenant: str,
        max_attempts: int,
        now_ms: int,
    ) -> tuple[str, str]:
        """One fire (see schedule_fire.lua): ('stale', ''), ('skipped', ''), or
        ('created' | 'existing', task id)."""
        reply = await self._call(
            "schedule_fire",
            tag,
            *self._schedule_task_args(
                due.name,
                "fire",
                due.next_at_ms,
                due.version,
                _ms_or_blank(next_at_ms),
                create,
                missed,
                spec,
                max_attempts,
                schedule_key(due.name, task_fire_at_ms),
                now_ms,
                tenant,
            ),
        )
        return str(reply[0]), str(reply[1]) if len(reply) > 1 else ""

    async def run_schedule(
        self, tag: str, schedule: Schedule, *, tenant: str, key: str, max_attempts: int, now_ms: int
    ) -> Task | None:
        """Makes a schedule's task now; None when the schedule changed meanwhile."""
        spec = schedule.spec
        reply = await self._call(
            "schedule_fire",
            tag,
            *self._schedule_task_args(
                spec.name, "run", 0, schedule.version, "", True, 0, spec, max_attempts, key,
                now_ms, tenant,
            ),
        )  # fmt: skip
        if reply[0] == "stale":
            return None
        return await self.get_task(tag, str(reply[1]))

    def _schedule_task_args(
        self,
        name: str,
        mode: str,
        expected_next: int,
        version: int,
        next_at: int | str,
        create: bool,
        missed: int,
        spec: ScheduleSpec,
        max_attempts: int,
        key: str,
        now_ms: int,
        tenant: str,
    ) -> tuple[Any, ...]:
        return (
            name,
            mode,
            expected_next,
            version,
            next_at,
            1 if create else 0,
            missed,
            keys.new_task_id(keys.tenant_tag(tenant)),
            spec.command,
            spec.payload,
            spec.priority,
            max_attempts,
            spec.webhook or "",
            keys.idempotency_digest(key),
            key,
            self._idempotency_ttl_ms,
            now_ms,
            self._history_limit,
            self.origin,
            tenant,
        )

    # ------------------------------------------------------------ reads

    async def existing_tasks(self, tag: str, task_ids: Sequence[str]) -> set[str]:
        """Which of these tasks the store still has (one round trip)."""
        async with self._reachable(), self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.exists(keys.task(tag, task_id))
            found = await pipe.execute() if task_ids else []
        return {task_id for task_id, n in zip(task_ids, found, strict=True) if n}

    async def get_task(self, tag: str, task_id: str) -> Task | None:
        async with self._reachable():
            fields: dict[str, str] = await self.redis.hgetall(keys.task(tag, task_id))  # type: ignore[assignment]
        return task_from_fields(fields) if fields else None

    async def get_result(self, tag: str, task_id: str) -> tuple[Task | None, Result | None]:
        """A task and its result, read together in one round trip."""
        async with self._reachable(), self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.task(tag, task_id))
            pipe.get(keys.result(tag, task_id))
            fields, raw = await pipe.execute()
        task = task_from_fields(fields) if fields else None
        return task, (result_from_record(orjson.loads(raw)) if raw and task else None)

    async def history(self, tag: str, task_id: str) -> list[HistoryEntry]:
        async with self._reachable():
            raw = await self.redis.lrange(keys.history(tag, task_id), 0, -1)
        entries = []
        for item in raw:
            detail = orjson.loads(item)
            at, event = detail.pop("at"), detail.pop("event")
            entries.append(HistoryEntry(at_ms=int(at), event=event, detail=detail))
        return entries


def _ms_or_blank(ms: int | None) -> int | str:
    return "" if ms is None else ms


def _created(reply: Any, row: NewTaskRow, tenant: str, now_ms: int) -> tuple[Task, bool]:
    """A create reply: the existing task (idempotent replay) or the new one."""
    if reply[0] == "existing":
        return task_from_fields(_pairs(reply[2])), False
    new = row.new
    return Task(
        id=row.task_id,
        command=new.command,
        payload=new.payload,
        priority=new.priority,
        status=Status.PENDING,
        attempts=0,
        max_attempts=row.max_attempts,
        tenant_id=tenant,
        created_at_ms=now_ms,
        updated_at_ms=now_ms,
        webhook=new.webhook,
        run_at_ms=row.visible_at_ms if row.visible_at_ms > now_ms else None,
        idempotency_key=new.idempotency_key,
        trace_parent=new.trace_parent,
        trace_state=new.trace_state,
        extra={"concurrencyKey": new.concurrency_key} if new.concurrency_key else {},
    ), True


def _result_of(task_id: str, submission: ResultSubmission, now_ms: int) -> Result:
    """The Result to record; inline artifacts must have been stored (by URL) before."""
    artifacts = tuple(a for a in submission.artifacts if isinstance(a, Artifact))
    if len(artifacts) < len(submission.artifacts):
        raise Invalid("inline artifacts (contentBase64) are taken by POST /tasks/{id}/result only")
    return Result(
        task_id=task_id,
        status=submission.status,
        result=submission.result,
        error=submission.error,
        artifacts=artifacts,
        completed_at_ms=now_ms,
    )


def _recorded(reply: Any, result: Result) -> Recorded:
    if reply[0] != "ok":
        raise _lease_error(reply[0])
    return Recorded(result, reply[2], int(reply[3]), callback_queued=bool(int(reply[1])))


def _subscription_error(code: str) -> None:
    if code == "not_found":
        raise NotFound("subscription not found (or expired)")
    if code == "not_owner":
        raise Forbidden("subscription belongs to another worker")


def subscription_from_fields(fields: dict[str, str]) -> Subscription:
    return Subscription(
        id=fields["id"],
        callback_url=fields["callbackUrl"],
        event_types=tuple(orjson.loads(fields["eventTypes"])),
        delivery_mode=DeliveryMode(fields["deliveryMode"]),
        group_id=fields.get("groupId") or None,
        min_interval_seconds=int(fields.get("minIntervalMs") or 0) / 1000,
        expires_at_ms=int(fields["expiresAt"]),
        created_at_ms=int(fields["createdAt"]),
        worker_id=fields["workerId"],
    )


def callback_from_fields(fields: dict[str, str]) -> Callback:
    """The callback a stored record holds; a damaged record still gives one (with
    `damaged` saying why), so that one bad record is abandoned rather than stopping
    every read of its outbox."""
    try:
        return _callback(fields)
    except (KeyError, ValueError, TypeError) as exc:
        return Callback(
            id=fields.get("id", ""),
            task_id=fields.get("taskId", ""),
            url=fields.get("url", ""),
            command=fields.get("command", ""),
            record={},
            attempts=_int_or_none(fields.get("attempts")) or 0,
            created_at_ms=_int_or_none(fields.get("createdAt")) or 0,
            claim=fields.get("claim") or "",
            last_error=fields.get("lastError") or None,
            abandoned_at_ms=_int_or_none(fields.get("abandonedAt")),
            damaged=f"damaged callback record: {type(exc).__name__}: {exc}",
        )


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _callback(fields: dict[str, str]) -> Callback:
    return Callback(
        id=fields["id"],
        task_id=fields["taskId"],
        url=fields["url"],
        command=fields["command"],
        record=orjson.loads(fields["record"]),
        attempts=int(fields.get("attempts") or 0),
        created_at_ms=int(fields["createdAt"]),
        trace_parent=fields.get("traceParent") or None,
        claim=fields.get("claim") or "",
        last_error=fields.get("lastError") or None,
        abandoned_at_ms=_int(fields.get("abandonedAt")),
    )


def result_record(result: Result) -> dict[str, Any]:
    """A result as stored (and as codeQ shows it on the wire, minus timestamps' format)."""
    return {
        "taskId": result.task_id,
        "status": result.status.value,
        "result": result.result,
        "error": result.error,
        "artifacts": [{"name": a.name, "url": a.url} for a in result.artifacts],
        "completedAt": result.completed_at_ms,
    }


def result_from_record(record: dict[str, Any]) -> Result:
    return Result(
        task_id=record["taskId"],
        status=Status(record["status"]),
        result=record.get("result"),
        error=record.get("error"),
        artifacts=tuple(Artifact(a["name"], a["url"]) for a in record.get("artifacts") or ()),
        completed_at_ms=int(record["completedAt"]),
    )
