"""Recurring schedules: what a schedule is, when it fires, and the admin operations
on them. The schedule firer (codeq.actors.firer) fires them; each fire is one store
script that creates the task and advances the schedule (compare-and-set), so any
number of daemons make exactly one task per fire time.

Cron times come from croniter, walked on the zone's wall clock and mapped to
instants with zoneinfo: a wall time the spring change skips fires once (at the
instant the skipped reading stands for, an hour later on the clock), a wall time
the autumn change repeats fires once (its first occurrence). Interval schedules
count real seconds from their anchor (startAt, else the time of the last PUT):
no time zone applies to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import croniter
from croniter.croniter import CroniterBadDateError, CroniterError

from codeq import metrics
from codeq.admin import require_admin
from codeq.domain import COMMAND_RE, Conflict, Invalid, NewTask, NotFound, Principal, Task
from codeq.store import keys

if TYPE_CHECKING:
    from codeq.store.store import Store

MISFIRE_POLICIES = ("skip", "run_once")
CRON_ALIASES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
DEFAULT_MISFIRE_GRACE_SECONDS = 60
UPCOMING = 5  # fire times a GET shows
# How many wall-clock candidates one "next fire" looks at before giving up: a few
# are skipped around a DST change (at most an hour of minutes), never thousands.
_MAX_CANDIDATES = 2000
# How many missed fire times a misfire counts before it stops counting.
MAX_COUNTED_MISSES = 1000
# The last instant a fire time may be (RFC 3339 ends at year 9999).
LAST_FIRE_MS = int(datetime(9999, 12, 31, 23, 59, tzinfo=UTC).timestamp() * 1000)
# Stale reads (another daemon fired, an edit landed) retried by an admin operation.
_RETRIES = 5


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule as an admin PUTs it: the task template and when to make one."""

    name: str
    command: str
    payload: str  # JSON text, as a task's
    priority: int = 0
    max_attempts: int | None = None
    webhook: str | None = None
    cron: str | None = None
    interval_seconds: int | None = None
    timezone: str = "UTC"
    start_at_ms: int | None = None
    end_at_ms: int | None = None
    misfire: str = "skip"
    misfire_grace_seconds: int = DEFAULT_MISFIRE_GRACE_SECONDS
    anchor_ms: int = 0  # where an interval schedule counts from

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> ScheduleSpec:
        return cls(**orjson.loads(text))

    def task(self, idempotency_key: str) -> NewTask:
        return NewTask(
            command=self.command,
            payload=self.payload,
            priority=self.priority,
            max_attempts=self.max_attempts,
            webhook=self.webhook,
            idempotency_key=idempotency_key,
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """A stored schedule: its spec and where it stands."""

    spec: ScheduleSpec
    version: int
    next_at_ms: int | None  # None: ended (past endAt) or no fire time left
    paused: bool
    created_at_ms: int
    updated_at_ms: int
    fires: int = 0
    misfires: int = 0
    last_fire_at_ms: int | None = None
    last_task_id: str | None = None

    @property
    def state(self) -> str:
        """active, paused, or ended (no fire time left)."""
        if self.paused:
            return "paused"
        return "ended" if self.next_at_ms is None else "active"

    def upcoming(self, count: int = UPCOMING) -> list[int]:
        """The next `count` fire times (none while paused or once ended)."""
        if self.paused or self.next_at_ms is None:
            return []
        return [self.next_at_ms, *fire_times(self.spec, self.next_at_ms, count - 1)]


@dataclass(frozen=True, slots=True)
class DueSchedule:
    """A schedule whose fire time has come, as the firer read it (the CAS values)."""

    name: str
    spec_json: str
    next_at_ms: int
    version: int


# ------------------------------------------------------------ validation


def check_schedule(spec: ScheduleSpec) -> ScheduleSpec:
    """Raises Invalid naming the field for a spec that cannot fire; returns it."""
    if not COMMAND_RE.fullmatch(spec.name):
        raise Invalid("schedule name may only contain letters, digits and _ . : -", field="name")
    if (spec.cron is None) == (spec.interval_seconds is None):
        raise Invalid("give exactly one of cron or intervalSeconds", field="cron")
    try:
        ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise Invalid(
            f"timezone must be an IANA time zone name (e.g. Europe/Berlin), got {spec.timezone!r}",
            field="timezone",
        ) from None
    if spec.cron is not None:
        _check_cron(spec.cron)
    if spec.misfire not in MISFIRE_POLICIES:
        raise Invalid(f"misfire must be one of {', '.join(MISFIRE_POLICIES)}", field="misfire")
    # an endAt before startAt, or a cron that never fires (Feb 30), is a schedule with
    # no fire times ("ended"), as one whose endAt has passed
    return spec


def _check_cron(expression: str) -> None:
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in CRON_ALIASES:
            raise Invalid(
                f"cron alias must be one of {', '.join(CRON_ALIASES)}, got {text!r}", field="cron"
            )
        return
    if len(text.split()) != 5:
        raise Invalid(
            "cron must have 5 fields (minute hour day-of-month month day-of-week) "
            f"or be an alias like @daily, got {expression!r}",
            field="cron",
        )
    try:
        croniter(text.lower(), datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:  # valid, but no date matches: no fire times
        return
    except (CroniterError, ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
        raise Invalid(f"cron {expression!r} is not valid: {exc}", field="cron") from None


# ------------------------------------------------------------ fire times


def next_fire(spec: ScheduleSpec, after_ms: int) -> int | None:
    """The first fire time strictly after `after_ms`, within startAt..endAt (None:
    the schedule has no fire time left)."""
    if spec.start_at_ms is not None:
        after_ms = max(after_ms, spec.start_at_ms - 1)
    at: int | None
    if spec.interval_seconds is not None:
        at = _next_interval(spec.anchor_ms, spec.interval_seconds * 1000, after_ms)
    else:
        assert spec.cron is not None
        at = _next_cron(spec.cron, ZoneInfo(spec.timezone), after_ms)
    if at is None or at > (spec.end_at_ms if spec.end_at_ms is not None else LAST_FIRE_MS):
        return None
    return at


def fire_times(spec: ScheduleSpec, after_ms: int, count: int) -> list[int]:
    """The next `count` fire times strictly after `after_ms` (fewer once it ends)."""
    out: list[int] = []
    at: int | None = after_ms
    while len(out) < count and at is not None:
        at = next_fire(spec, at)
        if at is not None:
            out.append(at)
    return out


def _next_interval(anchor_ms: int, every_ms: int, after_ms: int) -> int:
    if after_ms < anchor_ms:
        return anchor_ms
    return anchor_ms + ((after_ms - anchor_ms) // every_ms + 1) * every_ms


def _next_cron(expression: str, zone: ZoneInfo, after_ms: int) -> int | None:
    """croniter walks the zone's wall clock (naive times, so no DST arithmetic of
    its own); each wall time becomes the instant of its first occurrence (fold=0:
    a skipped time counts with the offset before the change). Candidates not after
    `after_ms` (a repeated hour, two wall times on one instant) are passed over."""
    wall = datetime.fromtimestamp(after_ms / 1000, zone).replace(tzinfo=None, microsecond=0)
    walk = croniter(expression.strip().lower(), wall)
    for _ in range(_MAX_CANDIDATES):
        try:
            candidate: datetime = walk.get_next(datetime)
        except (CroniterError, ValueError, OverflowError):  # past year 9999, or never
            return None
        at = int(candidate.replace(tzinfo=zone, fold=0).timestamp() * 1000)
        if at > after_ms:
            return at
    return None


# ------------------------------------------------------------ firing


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What one fire of a due schedule does: the CAS value, whether a task is made
    (and for which fire time), the next fire time, and the fire times missed."""

    due_at_ms: int
    create: bool
    task_fire_at_ms: int
    next_at_ms: int | None
    missed: int
    lateness_ms: int


def plan_fire(spec: ScheduleSpec, due_at_ms: int, now_ms: int) -> FirePlan:
    """A fire within the misfire grace makes the task of its fire time and moves on
    to the next (so fire times inside the grace are each made, one by one). Later
    than that is a misfire: every fire time up to now was missed; `skip` makes no
    task, `run_once` one (for the latest missed time); either way the schedule goes
    on from the first fire time after now."""
    lateness = now_ms - due_at_ms
    if lateness <= spec.misfire_grace_seconds * 1000:
        return FirePlan(due_at_ms, True, due_at_ms, next_fire(spec, due_at_ms), 0, lateness)
    latest, missed = due_at_ms, 1
    for at in _times_up_to(spec, due_at_ms, now_ms):
        latest, missed = at, missed + 1
    following = next_fire(spec, now_ms)
    if spec.misfire == "run_once":
        return FirePlan(due_at_ms, True, latest, following, missed - 1, lateness)
    return FirePlan(due_at_ms, False, latest, following, missed, lateness)


def _times_up_to(spec: ScheduleSpec, after_ms: int, until_ms: int) -> Iterator[int]:
    at: int | None = after_ms
    for _ in range(MAX_COUNTED_MISSES):
        at = next_fire(spec, at) if at is not None else None
        if at is None or at > until_ms:
            return
        yield at


def idempotency_key(name: str, fire_at_ms: int) -> str:
    """The idempotency key of a schedule's task for one fire time."""
    return f"schedule:{name}:{fire_at_ms}"


def run_now_key(name: str, now_ms: int) -> str:
    return f"schedule:{name}:run:{now_ms}"


# ------------------------------------------------------------ admin operations


class Schedules:
    """The admin operations on the caller's tenant's schedules."""

    def __init__(
        self,
        store: Store,
        *,
        max_attempts_default: int = 5,
        due_at: Callable[[int], None] = lambda _at: None,
        became_ready: Callable[[str, str], None] = lambda _tag, _command: None,
        check_webhook: Callable[[NewTask], None] = lambda _new: None,
    ) -> None:
        """`due_at` tells the local firer of an earlier fire time, `became_ready` wakes
        the claims parked on a task's command, `check_webhook` applies the URL guard."""
        self.store = store
        self.max_attempts_default = max_attempts_default
        self.due_at = due_at
        self.became_ready = became_ready
        self.check_webhook = check_webhook

    async def put(self, who: Principal, spec: ScheduleSpec) -> tuple[Schedule, bool]:
        """Creates or replaces a schedule; returns it and whether it is new. An edit
        takes effect from the first fire time after now."""
        require_admin(who)
        now = _now_ms()
        spec = check_schedule(replace(spec, anchor_ms=spec.start_at_ms or now))
        self.check_webhook(spec.task(""))
        tag = keys.tenant_tag(who.tenant)
        await self.store.register_tenant(tag, who.tenant)
        next_at = next_fire(spec, now)
        created = await self.store.put_schedule(tag, spec, next_at_ms=next_at, now_ms=now)
        if next_at is not None:
            self.due_at(next_at)
        return await self._get(tag, spec.name), created

    async def get(self, who: Principal, name: str) -> Schedule:
        require_admin(who)
        return await self._get(keys.tenant_tag(who.tenant), _checked_name(name))

    async def list(self, who: Principal) -> list[Schedule]:
        require_admin(who)
        return await self.store.schedules(keys.tenant_tag(who.tenant))

    async def delete(self, who: Principal, name: str) -> None:
        require_admin(who)
        if not await self.store.delete_schedule(keys.tenant_tag(who.tenant), _checked_name(name)):
            raise NotFound(f"no schedule named {name!r}")

    async def pause(self, who: Principal, name: str) -> Schedule:
        require_admin(who)
        tag = keys.tenant_tag(who.tenant)
        current = await self._get(tag, _checked_name(name))
        await self.store.set_schedule_paused(
            tag, name, paused=True, next_at_ms=current.next_at_ms, version=None
        )
        return await self._get(tag, name)

    async def resume(self, who: Principal, name: str) -> Schedule:
        """Resumes from the first fire time after now: those passed while paused are
        not made up."""
        require_admin(who)
        tag = keys.tenant_tag(who.tenant)
        for _ in range(_RETRIES):
            current = await self._get(tag, _checked_name(name))
            next_at = next_fire(current.spec, _now_ms())
            if await self.store.set_schedule_paused(
                tag, name, paused=False, next_at_ms=next_at, version=current.version
            ):
                if next_at is not None:
                    self.due_at(next_at)
                return await self._get(tag, name)
        raise Conflict(f"schedule {name!r} kept changing; try again")

    async def run(self, who: Principal, name: str) -> Task:
        """Makes the schedule's task now ("run now"); the schedule's times do not move."""
        require_admin(who)
        tag = keys.tenant_tag(who.tenant)
        for _ in range(_RETRIES):
            current = await self._get(tag, _checked_name(name))
            now = _now_ms()
            task = await self.store.run_schedule(
                tag,
                current,
                tenant=who.tenant,
                key=run_now_key(name, now),
                max_attempts=current.spec.max_attempts or self.max_attempts_default,
                now_ms=now,
            )
            if task is not None:
                self.became_ready(tag, task.command)
                metrics.SCHEDULE_FIRES.labels("run").inc()
                metrics.TASK_CREATED.labels(task.command).inc()
                return task
        raise Conflict(f"schedule {name!r} kept changing; try again")

    async def _get(self, tag: str, name: str) -> Schedule:
        schedule = await self.store.schedule(tag, name)
        if schedule is None:
            raise NotFound(f"no schedule named {name!r}")
        return schedule


def _checked_name(name: str) -> str:
    if not COMMAND_RE.fullmatch(name):
        raise Invalid("schedule name may only contain letters, digits and _ . : -", field="name")
    return name


def schedule_from_fields(fields: dict[str, str]) -> Schedule:
    """A schedule from its stored hash."""

    def number(name: str) -> int | None:
        value = fields.get(name)
        return int(value) if value not in (None, "") else None

    return Schedule(
        spec=ScheduleSpec.from_json(fields["spec"]),
        version=int(fields.get("version") or 0),
        next_at_ms=number("next"),
        paused=fields.get("paused") == "1",
        created_at_ms=number("createdAt") or 0,
        updated_at_ms=number("updatedAt") or 0,
        fires=number("fires") or 0,
        misfires=number("misfires") or 0,
        last_fire_at_ms=number("lastFireAt"),
        last_task_id=fields.get("lastTaskId") or None,
    )
