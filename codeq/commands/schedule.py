"""`codeq schedule put|get|list|delete|pause|resume|run`: recurring schedules
(an admin token)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from codeq.client import Client, JsonObject
from codeq.commands.base import Subcommands, command, group, json_object
from codeq.commands.output import emit_json, note, record_table, rows_table, stdout

LIST_COLUMNS = [
    ("name", "name"),
    ("command", "command"),
    ("cron", "cron"),
    ("intervalSeconds", "every (s)"),
    ("timezone", "zone"),
    ("state", "state"),
    ("next", "next fire"),
    ("fires", "fires"),
    ("misfires", "misfires"),
]


def add(commands: Subcommands) -> None:
    schedules = group(
        commands,
        "schedule",
        "recurring schedules: tasks made on a cron or an interval (admin token)",
        """
        codeq schedule put nightly-report --command REPORT --cron "30 2 * * *" \\
            --timezone Europe/Berlin --payload '{"kind": "daily"}'
        codeq schedule put heartbeat --command PING --every 60 --misfire run_once
        codeq schedule list
        codeq schedule get nightly-report
        codeq schedule run nightly-report
        """,
    )
    put = command(
        schedules,
        "put",
        "create or replace a schedule",
        _put,
        "admin",
        'codeq schedule put nightly --command REPORT --cron "@daily" --timezone America/New_York\n'
        "codeq schedule put tick --command PING --every 30 --misfire skip",
    )
    put.add_argument("name", metavar="NAME")
    put.add_argument("--command", required=True, dest="task_command", help="the tasks' command")
    when = put.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='5-field cron or @hourly, @daily, … ("30 2 * * *")')
    when.add_argument("--every", type=int, metavar="SECONDS", help="a fixed interval")
    put.add_argument("--timezone", help="IANA zone of the cron times (default UTC)")
    put.add_argument("--payload", default="{}", help="the tasks' payload, a JSON object")
    put.add_argument("--priority", type=int, help="0..9, higher first")
    put.add_argument("--max-attempts", type=int, metavar="N")
    put.add_argument("--webhook", metavar="URL", help="the tasks' result callback")
    put.add_argument("--start-at", metavar="RFC3339", help="no fire before")
    put.add_argument("--end-at", metavar="RFC3339", help="no fire after")
    put.add_argument("--misfire", choices=("skip", "run_once"), help="after downtime (skip)")
    put.add_argument("--misfire-grace", type=int, metavar="SECONDS", help="default 60")

    command(schedules, "list", "list the tenant's schedules", _list, "admin", "codeq schedule list")
    for name, help, run in (
        ("get", "show a schedule and its next 5 fire times", _get),
        ("delete", "delete a schedule (its tasks stay)", _delete),
        ("pause", "stop a schedule's fires", _pause),
        ("resume", "fire again, from the next fire time after now", _resume),
        ("run", "make the schedule's task now (its fire times do not move)", _run),
    ):
        sub = command(schedules, name, help, run, "admin", f"codeq schedule {name} nightly")
        sub.add_argument("name", metavar="NAME")


def _path(name: str, action: str = "") -> str:
    return f"/admin/schedules/{quote(name, safe='')}" + (f"/{action}" if action else "")


async def _put(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "command": args.task_command,
        "payload": json_object(args.payload, "--payload"),
        "cron": args.cron,
        "intervalSeconds": args.every,
        "timezone": args.timezone,
        "priority": args.priority,
        "maxAttempts": args.max_attempts,
        "webhook": args.webhook,
        "startAt": args.start_at,
        "endAt": args.end_at,
        "misfire": args.misfire,
        "misfireGraceSeconds": args.misfire_grace,
    }
    status, schedule = await client.request(
        "PUT", _path(args.name), {k: v for k, v in body.items() if v is not None}
    )
    verb = "created" if status == 201 else "updated"
    return _show(schedule, args, f"schedule {args.name} {verb}")


async def _get(client: Client, args: argparse.Namespace) -> int:
    _, schedule = await client.request("GET", _path(args.name))
    return _show(schedule, args, None)


async def _list(client: Client, args: argparse.Namespace) -> int:
    _, answer = await client.request("GET", "/admin/schedules")
    if args.json:
        emit_json(answer)
        return 0
    rows = [s | {"next": (s["nextFireTimes"] or [""])[0]} for s in answer["schedules"]]
    if rows:
        stdout().print(rows_table(rows, LIST_COLUMNS, numeric=("fires", "misfires")))
    note(f"{len(rows)} schedule(s)")
    return 0


async def _delete(client: Client, args: argparse.Namespace) -> int:
    _, answer = await client.request("DELETE", _path(args.name))
    if args.json:
        emit_json(answer)
    else:
        stdout().print(f"schedule {args.name} deleted")
    return 0


async def _pause(client: Client, args: argparse.Namespace) -> int:
    _, schedule = await client.request("POST", _path(args.name, "pause"))
    return _show(schedule, args, f"schedule {args.name} paused")


async def _resume(client: Client, args: argparse.Namespace) -> int:
    _, schedule = await client.request("POST", _path(args.name, "resume"))
    return _show(schedule, args, f"schedule {args.name} resumed")


async def _run(client: Client, args: argparse.Namespace) -> int:
    _, task = await client.request("POST", _path(args.name, "run"))
    if args.json:
        emit_json(task)
    else:
        stdout().print(f"schedule {args.name}: task {task['id']} ({task['command']}) created")
    return 0


def _show(schedule: JsonObject, args: argparse.Namespace, said: str | None) -> int:
    if args.json:
        emit_json(schedule)
        return 0
    upcoming = schedule.get("nextFireTimes") or []
    record = {k: v for k, v in schedule.items() if k != "nextFireTimes"}
    stdout().print(record_table(record, title=said))
    stdout().print("next fire times: " + (", ".join(upcoming) if upcoming else "none"))
    return 0
