"""Recurring schedules: cron and interval fire times (DST-correct in a time zone),
the admin API, exactly one task per fire time across daemons, misfire policies after
downtime, edits between fires, and bad input refused naming the field."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import Api, RunningDaemon, store_client, wait_for
from redis.asyncio import Redis
from test_cli import Cli

from codeq.domain import Invalid
from codeq.schedules import (
    ScheduleSpec,
    check_schedule,
    fire_times,
    next_fire,
    plan_fire,
)
from codeq.store import keys
from codeq.store.store import Store

ADMIN = "/v1/codeq/admin"
TAG = keys.tenant_tag("acme")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def cron(expression: str, zone: str = "America/New_York") -> ScheduleSpec:
    return ScheduleSpec(name="s", command="A", payload="{}", cron=expression, timezone=zone)


def local_dates(times: list[int], zone: ZoneInfo) -> Counter[date]:
    return Counter(datetime.fromtimestamp(t / 1000, zone).date() for t in times)


# ------------------------------------------------------------ fire times (no store)


def test_daily_on_a_skipped_wall_time_fires_once_on_the_spring_change() -> None:
    """02:30 daily on New York's spring-forward day (02:00 -> 03:00) fires once, at 03:30."""
    times = fire_times(cron("30 2 * * *"), ms(datetime(2026, 3, 6, 12, tzinfo=NEW_YORK)), 4)
    per_day = local_dates(times, NEW_YORK)
    assert per_day[date(2026, 3, 8)] == 1
    assert set(per_day.values()) == {1}
    spring = datetime.fromtimestamp(times[1] / 1000, NEW_YORK)
    assert (spring.date(), spring.hour, spring.minute) == (date(2026, 3, 8), 3, 30)
    assert times[2] - times[1] == 23 * 3600 * 1000  # the next day is back at 02:30


def test_daily_on_a_repeated_wall_time_fires_once_on_the_autumn_change() -> None:
    """01:30 daily on New York's fall-back day (01:00-02:00 twice) fires once, the first time."""
    times = fire_times(cron("30 1 * * *"), ms(datetime(2026, 10, 31, 12, tzinfo=NEW_YORK)), 3)
    assert local_dates(times, NEW_YORK) == Counter(
        {date(2026, 11, 1): 1, date(2026, 11, 2): 1, date(2026, 11, 3): 1}
    )
    first = datetime.fromtimestamp(times[0] / 1000, NEW_YORK)
    assert first.utcoffset() == timedelta(hours=-4)  # EDT: the first 01:30
    assert times[1] - times[0] == 25 * 3600 * 1000


def test_hourly_across_both_changes_never_repeats_an_instant() -> None:
    """@hourly in Berlin: 23 fires on the spring day, 24 on the autumn day, strictly later each."""
    spring = fire_times(
        cron("@hourly", "Europe/Berlin"), ms(datetime(2026, 3, 29, tzinfo=BERLIN)) - 1, 30
    )
    autumn = fire_times(
        cron("@hourly", "Europe/Berlin"), ms(datetime(2026, 10, 25, tzinfo=BERLIN)) - 1, 30
    )
    for times in (spring, autumn):
        assert all(b > a for a, b in pairwise(times))
    assert local_dates(spring, BERLIN)[date(2026, 3, 29)] == 23
    assert local_dates(autumn, BERLIN)[date(2026, 10, 25)] == 24


def test_interval_counts_real_seconds_from_its_anchor_within_start_and_end() -> None:
    """An interval schedule fires at anchor + k * interval, only inside startAt..endAt."""
    spec = ScheduleSpec(
        name="s", command="A", payload="{}", interval_seconds=60, anchor_ms=1_000_000,
        start_at_ms=1_000_000, end_at_ms=1_000_000 + 180_000,
    )  # fmt: skip
    assert fire_times(spec, 0, 10) == [1_000_000 + k * 60_000 for k in range(4)]
    assert next_fire(spec, 1_000_000 + 180_000) is None


@pytest.mark.parametrize(
    ("expression", "zone", "field"),
    [
        ("* * * * * *", "UTC", "cron"),  # six fields (seconds): not a 5-field cron
        ("61 * * * *", "UTC", "cron"),
        ("@sometimes", "UTC", "cron"),
        ("*/0 * * * *", "UTC", "cron"),
        ("@daily", "Mars/Olympus_Mons", "timezone"),
        ("@daily", "../../etc/passwd", "timezone"),
    ],
)
def test_a_schedule_that_cannot_fire_is_refused_naming_the_field(
    expression: str, zone: str, field: str
) -> None:
    """Bad cron expressions and zones are Invalid, naming cron or timezone."""
    with pytest.raises(Invalid) as caught:
        check_schedule(cron(expression, zone))
    assert caught.value.extra["field"] == field


def test_misfire_policies_after_three_missed_fire_times() -> None:
    """Past the grace: skip makes no task, run_once one; both go on after now."""
    every = ScheduleSpec(
        name="s", command="A", payload="{}", interval_seconds=10, misfire_grace_seconds=1
    )
    now = 35_500  # fire times 10, 20, 30 s passed
    skip = plan_fire(every, 10_000, now)
    assert (skip.create, skip.missed, skip.next_at_ms) == (False, 3, 40_000)
    once = plan_fire(ScheduleSpec(**{**_fields(every), "misfire": "run_once"}), 10_000, now)
    assert (once.create, once.missed, once.task_fire_at_ms, once.next_at_ms) == (
        True, 2, 30_000, 40_000,
    )  # fmt: skip
    on_time = plan_fire(every, 10_000, 10_200)
    assert (on_time.create, on_time.missed, on_time.next_at_ms) == (True, 0, 20_000)


def test_a_schedule_that_never_fires_is_taken_and_has_no_fire_times() -> None:
    """Feb 30, or an endAt before startAt: valid, and ended from the start."""
    never = check_schedule(cron("0 0 30 2 *"))
    assert next_fire(never, 0) is None
    backwards = ScheduleSpec(
        name="s", command="A", payload="{}", interval_seconds=1, start_at_ms=2000, end_at_ms=1000
    )
    assert next_fire(check_schedule(backwards), 0) is None


def _fields(spec: ScheduleSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__slots__}


# ------------------------------------------------------------ through the API


def path(name: str, action: str = "") -> str:
    return f"{ADMIN}/schedules/{name}" + (f"/{action}" if action else "")


async def put(api: Api, name: str, **body: Any) -> tuple[int, Any]:
    body.setdefault("command", "report")
    body.setdefault("payload", {})
    code, data, _ = await api.call("PUT", path(name), "admin", body)
    return code, data


async def tasks_of(api: Api, command: str) -> list[dict[str, Any]]:
    code, body, _ = await api.call(
        "GET", f"{ADMIN}/queues/{command}/tasks?status=ready&limit=1000", "admin"
    )
    assert code == 200, body
    tasks: list[dict[str, Any]] = body["tasks"]
    return tasks


def fire_time_of(task: dict[str, Any]) -> int:
    """The fire time a schedule's task stands for (its idempotency key's last part)."""
    return int(task["idempotencyKey"].rsplit(":", 1)[1])


async def test_put_get_list_pause_resume_run_delete(api: Api) -> None:
    """The admin API of a schedule, from PUT to DELETE, with its next 5 fire times."""
    code, made = await put(
        api, "nightly", cron="@daily", timezone="Europe/Berlin", payload={"x": 1}
    )
    assert code == 201, made
    assert made["state"] == "active" and len(made["nextFireTimes"]) == 5
    assert made["payload"] == {"x": 1} and made["misfire"] == "skip"
    code, again = await put(api, "nightly", cron="0 3 * * 1", timezone="Europe/Berlin")
    assert code == 200 and again["version"] == made["version"] + 1
    code, got, _ = await api.call("GET", path("nightly"), "admin")
    assert code == 200 and got["cron"] == "0 3 * * 1"
    code, listed, _ = await api.call("GET", f"{ADMIN}/schedules", "admin")
    assert [s["name"] for s in listed["schedules"]] == ["nightly"]
    code, paused, _ = await api.call("POST", path("nightly", "pause"), "admin")
    assert (paused["state"], paused["nextFireTimes"]) == ("paused", [])
    code, resumed, _ = await api.call("POST", path("nightly", "resume"), "admin")
    assert resumed["state"] == "active" and len(resumed["nextFireTimes"]) == 5
    code, task, _ = await api.call("POST", path("nightly", "run"), "admin")
    assert code == 202 and task["command"] == "report"
    assert [t["id"] for t in await tasks_of(api, "report")] == [task["id"]]
    code, _, _ = await api.call("DELETE", path("nightly"), "admin")
    assert code == 200
    code, _, _ = await api.call("GET", path("nightly"), "admin")
    assert code == 404


async def test_schedules_need_an_admin_and_stay_in_their_tenant(api: Api) -> None:
    """A producer token is refused; another tenant's admin does not see the schedule."""
    body = {"command": "A", "cron": "@daily", "payload": {}}
    code, _, _ = await api.call("PUT", path("p"), "producer", body)
    assert code == 403
    assert (await put(api, "mine", cron="@daily"))[0] == 201
    code, _, _ = await api.call("GET", path("mine"), "admin_globex")
    assert code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "@daily", "timezone": "Europe/Atlantis"}, "timezone"),
        ({"cron": "@daily", "intervalSeconds": 60}, "cron"),
        ({}, "cron"),
        ({"intervalSeconds": 0}, "intervalSeconds"),
        ({"cron": "@daily", "misfire": "twice"}, "misfire"),
        ({"cron": "0 9 * * MON-FRI L"}, "cron"),
        ({"cron": "@daily", "timezone": "utc"}, "timezone"),
        ({"cron": "@daily", "command": "no spaces"}, "command"),
        ({"cron": "@daily", "payload": None}, "payload"),
    ],
)  # fmt: skip
async def test_bad_schedule_is_400_naming_the_field_and_changes_nothing(
    api: Api, redis: Redis, body: dict[str, Any], field: str
) -> None:
    """Bad cron, zone or fields: 400 naming the field; no schedule is stored."""
    code, data = await put(api, "bad", **body)
    assert code == 400, data
    assert data["field"] == field, data
    assert not await redis.exists(keys.schedule(TAG, "bad"))
    code, _, _ = await api.call("GET", path("bad"), "admin")
    assert code == 404


async def test_interval_schedule_makes_one_task_per_fire_time(api: Api) -> None:
    """End to end: an interval of 1 s makes tasks a second apart, one per fire time."""
    code, made = await put(api, "tick", intervalSeconds=1)
    assert code == 201 and made["intervalSeconds"] == 1
    tasks = await wait_for(
        lambda: _at_least(api, "report", 2), timeout=10, message="two fires of tick"
    )
    times = sorted(fire_time_of(t) for t in tasks)
    assert all(b - a == 1000 for a, b in pairwise(times))
    assert len(set(times)) == len(times)
    code, got, _ = await api.call("GET", path("tick"), "admin")
    assert got["fires"] >= 2 and got["lastTaskId"] in {t["id"] for t in tasks}


async def _at_least(api: Api, command: str, n: int) -> list[dict[str, Any]] | None:
    tasks = await tasks_of(api, command)
    return tasks if len(tasks) >= n else None


async def test_two_daemons_on_one_store_never_double_fire(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], api: Api
) -> None:
    """Three daemons on one store fire one schedule: every fire time has one task."""
    await start_daemon()
    await start_daemon()
    assert (await put(api, "race", intervalSeconds=1))[0] == 201
    tasks = await wait_for(lambda: _at_least(api, "report", 4), timeout=15, message="4 fires")
    per_fire_time = Counter(fire_time_of(t) for t in tasks)
    assert set(per_fire_time.values()) == {1}, per_fire_time
    times = sorted(per_fire_time)
    assert times == list(range(times[0], times[0] + 1000 * len(times), 1000))


async def _after_downtime(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    api_of: Callable[[RunningDaemon], Api],
    redis: Redis,
    misfire: str,
) -> tuple[Api, int]:
    """A 10 s schedule whose daemons were down for three of its fire times: while no
    daemon runs, its stored next fire time is set three intervals back (the fire
    times N-30 s, N-20 s and N-10 s have passed; N is still ahead). Returns N."""
    first = await start_daemon()
    api = api_of(first)
    anchor = datetime.fromtimestamp(time.time() - 60).astimezone().isoformat()
    code, _ = await put(
        api, "late", intervalSeconds=10, startAt=anchor, misfire=misfire, misfireGraceSeconds=1
    )
    assert code == 201
    await first.stop()
    key = keys.schedule(TAG, "late")
    ahead = int(str(await redis.hget(key, "next")))
    down_since = ahead - 30_000
    await redis.hset(key, "next", down_since)
    await redis.zadd(keys.schedules_due(TAG), {"late": down_since})
    api = api_of(await start_daemon())
    await wait_for(
        lambda: _next_is_later(redis, down_since), timeout=10, message="the misfire handled"
    )
    return api, ahead


async def _next_is_later(redis: Redis, than: int) -> bool:
    stored = await redis.hget(keys.schedule(TAG, "late"), "next")
    return stored is not None and int(stored) > than


@pytest.fixture
def api_of(http: Any) -> Callable[[RunningDaemon], Api]:
    return lambda daemon: Api(http, daemon.url)


async def test_misfire_skip_makes_no_catch_up_task(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    api_of: Callable[[RunningDaemon], Api],
    redis: Redis,
) -> None:
    """misfire=skip after 3 missed fire times: no task, next fire in the future."""
    api, ahead = await _after_downtime(start_daemon, api_of, redis, "skip")
    assert await tasks_of(api, "report") == []
    code, got, _ = await api.call("GET", path("late"), "admin")
    assert code == 200
    assert (got["misfires"], got["fires"]) == (3, 0)
    next_at = int(datetime.fromisoformat(got["nextFireTimes"][0]).timestamp() * 1000)
    assert next_at == ahead > time.time_ns() // 1_000_000


async def test_misfire_run_once_makes_exactly_one_catch_up_task(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    api_of: Callable[[RunningDaemon], Api],
    redis: Redis,
) -> None:
    """misfire=run_once after 3 missed fire times: exactly one task, for the latest."""
    api, ahead = await _after_downtime(start_daemon, api_of, redis, "run_once")
    tasks = await tasks_of(api, "report")
    assert [fire_time_of(t) for t in tasks] == [ahead - 10_000]
    code, got, _ = await api.call("GET", path("late"), "admin")
    assert code == 200
    assert (got["fires"], got["misfires"]) == (1, 2)
    assert int(datetime.fromisoformat(got["nextFireTimes"][0]).timestamp() * 1000) == ahead


async def test_a_schedule_edited_between_fires_fires_the_new_template(api: Api) -> None:
    """After a PUT that changes the command, fires make the new command's tasks, and
    no fire time gets two tasks."""
    assert (await put(api, "edit", intervalSeconds=1, command="old"))[0] == 201
    await wait_for(lambda: _at_least(api, "old", 1), timeout=10, message="a fire of old")
    assert (await put(api, "edit", intervalSeconds=1, command="new"))[0] == 200
    edited = time.time_ns() // 1_000_000
    new = await wait_for(lambda: _at_least(api, "new", 2), timeout=10, message="fires of new")
    old = await tasks_of(api, "old")
    assert all(fire_time_of(t) <= edited for t in old)
    assert all(fire_time_of(t) > edited for t in new)
    all_times = [fire_time_of(t) for t in old + new]
    assert len(all_times) == len(set(all_times))


async def test_paused_schedule_does_not_fire(api: Api, redis: Redis) -> None:
    """A paused schedule leaves the firer's index and makes no task until resumed."""
    assert (await put(api, "held", intervalSeconds=1))[0] == 201
    code, _, _ = await api.call("POST", path("held", "pause"), "admin")
    assert code == 200
    assert await redis.zscore(keys.schedules_due(TAG), "held") is None
    code, _, _ = await api.call("POST", path("held", "resume"), "admin")
    await wait_for(lambda: _at_least(api, "report", 1), timeout=10, message="a fire after resume")


async def test_a_schedule_it_cannot_read_does_not_stop_the_others(
    daemon: RunningDaemon, api: Api, redis: Redis
) -> None:
    """A broken schedule is counted and skipped; the firer keeps firing the rest."""
    now = time.time_ns() // 1_000_000
    await redis.hset(keys.schedule(TAG, "broken"), mapping={"spec": "{", "next": now, "version": 1})
    await redis.zadd(keys.schedules_due(TAG), {"broken": now})
    assert (await put(api, "fine", intervalSeconds=1))[0] == 201
    await wait_for(lambda: _at_least(api, "report", 2), timeout=10, message="fires of fine")
    assert daemon.daemon.supervisor is not None
    assert daemon.daemon.supervisor.health()["schedule firer"] == "running"


async def test_lua_schedule_key_names_match_python(redis: Redis) -> None:
    """lib.lua's schedule keys are keys.py's."""
    lib = (Path(__file__).parents[1] / "codeq/store/scripts/lib.lua").read_text()
    names = await redis.eval(
        lib + "\nreturn {k_schedule('n'), K_SCHEDULES, K_SCHEDULE_NAMES}", 1, keys.prefix(TAG)
    )
    assert names == [keys.schedule(TAG, "n"), keys.schedules_due(TAG), keys.schedule_names(TAG)]


# ------------------------------------------------------------ the CLI


async def test_schedule_cli_put_get_list_run_pause_resume_delete(
    daemon: RunningDaemon, api: Api, tmp_path: Path
) -> None:
    """`codeq schedule …` drives the admin API: put, get, list, run, pause, resume, delete."""
    codeq = Cli(daemon, tmp_path)
    put_cli = await codeq(
        "schedule", "put", "nightly", "--command", "report", "--cron", "30 2 * * *",
        "--timezone", "Europe/Berlin", "--payload", '{"kind": "daily"}', "--json", who="admin",
    )  # fmt: skip
    assert put_cli.code == 0, put_cli.err
    assert put_cli.json()["payload"] == {"kind": "daily"}
    got = await codeq("schedule", "get", "nightly", "--json", who="admin")
    assert got.code == 0 and len(got.json()["nextFireTimes"]) == 5
    listed = await codeq("schedule", "list", who="admin")
    assert listed.code == 0 and "nightly" in listed.out and "1 schedule(s)" in listed.err
    ran = await codeq("schedule", "run", "nightly", "--json", who="admin")
    assert ran.code == 0
    assert [t["id"] for t in await tasks_of(api, "report")] == [ran.json()["id"]]
    paused = await codeq("schedule", "pause", "nightly", "--json", who="admin")
    assert paused.json()["state"] == "paused"
    resumed = await codeq("schedule", "resume", "nightly", "--json", who="admin")
    assert resumed.json()["state"] == "active"
    assert (await codeq("schedule", "delete", "nightly", who="admin")).code == 0
    missing = await codeq("schedule", "get", "nightly", who="admin")
    assert missing.code == 1 and "no schedule named" in missing.err
    bad = await codeq(
        "schedule", "put", "x", "--command", "A", "--cron", "@daily", "--timezone", "Nowhere/X",
        who="admin",
    )  # fmt: skip
    assert bad.code == 1 and "timezone" in bad.err


# ------------------------------------------------------------ the fire script


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """The store layer on the test store, to fire by hand at chosen times."""
    store = Store(store_client(store_url), origin="test")
    await store.connect()
    yield store
    await store.close()


async def test_two_fires_of_one_read_make_one_task(store: Store) -> None:
    """Two firers that read the same due schedule: the first fires, the second is stale."""
    spec = ScheduleSpec(name="race", command="A", payload="{}", interval_seconds=60)
    await store.put_schedule(TAG, spec, next_at_ms=60_000, now_ms=0)
    [due], _ = await store.due_schedules(TAG, now_ms=60_000, batch=10)
    plan = plan_fire(spec, due.next_at_ms, 60_000)
    fire: dict[str, Any] = {
        "create": plan.create, "task_fire_at_ms": plan.task_fire_at_ms,
        "next_at_ms": plan.next_at_ms, "missed": 0, "tenant": "acme", "max_attempts": 5,
        "now_ms": 60_000,
    }  # fmt: skip
    first = await store.fire_schedule(TAG, due, spec, **fire)
    second = await store.fire_schedule(TAG, due, spec, **fire)
    assert first[0] == "created" and second == ("stale", "")
    schedule = await store.schedule(TAG, "race")
    assert schedule is not None
    assert (schedule.next_at_ms, schedule.fires, schedule.last_task_id) == (120_000, 1, first[1])


async def test_an_edit_after_the_read_wins_over_the_fire(store: Store) -> None:
    """A PUT between a firer's read and its fire bumps the version: the fire is refused."""
    spec = ScheduleSpec(name="edit", command="A", payload="{}", interval_seconds=60)
    await store.put_schedule(TAG, spec, next_at_ms=60_000, now_ms=0)
    [due], _ = await store.due_schedules(TAG, now_ms=60_000, batch=10)
    edited = ScheduleSpec(name="edit", command="B", payload="{}", interval_seconds=60)
    await store.put_schedule(TAG, edited, next_at_ms=60_000, now_ms=1)
    outcome = await store.fire_schedule(
        TAG, due, spec, create=True, task_fire_at_ms=60_000, next_at_ms=120_000, missed=0,
        tenant="acme", max_attempts=5, now_ms=60_000,
    )  # fmt: skip
    assert outcome == ("stale", "")
    [again], _ = await store.due_schedules(TAG, now_ms=60_000, batch=10)
    assert ScheduleSpec.from_json(again.spec_json).command == "B"
