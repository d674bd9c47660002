"""`codeq task create|get|result|cancel|history`: the producer's commands; `codeq task
list|requeue|fail`: the operator's (an admin token)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from codeq.client import Client, CodeqError, JsonObject, Producer
from codeq.commands.base import Subcommands, UsageError, command, group, json_object
from codeq.commands.output import (
    emit_json,
    emit_json_line,
    note,
    progress,
    record_table,
    rows_table,
    stdout,
)


def add(commands: Subcommands) -> None:
    tasks = group(
        commands,
        "task",
        "create tasks and follow them (producer token)",
        """
        codeq task create GENERATE_MASTER --payload '{"jobId":"j-123"}' --priority 3
        codeq task create --file tasks.jsonl
        codeq task result 0123456789ab-Qx3… --wait 60 --json
        """,
    )
    create = command(
        tasks,
        "create",
        "create a task, or one per line of a JSON Lines file",
        _create,
        "producer",
        """
        codeq task create GENERATE_MASTER --payload '{"jobId":"j-123"}'
        codeq task create SEND_EMAIL --delay 3600 --idempotency-key mail-42
        codeq task create REPORT --run-at 2030-01-01T09:00:00Z --max-attempts 3
        codeq task create --file tasks.jsonl --json > created.jsonl
        codeq task create RENDER --priority 5 --file jobs.jsonl   # flags are line defaults

        Each line of --file is a create body: {"command": "A", "payload": {…},
        "priority": 3, "delaySeconds": 10, …}; blank lines are skipped. With
        --json, one line per input line: the task, or {"line": N, "error": …}.
        """,
        pooled=_bulk,
    )
    create.add_argument("task_command", nargs="?", metavar="COMMAND", help="the task's command")
    create.add_argument(
        "--event",
        "--command",
        dest="event",
        metavar="COMMAND",
        help="the task's command, as codeQ's CLI spells it",
    )
    create.add_argument("--payload", metavar="JSON", help="payload object (default {})")
    create.add_argument("--priority", type=int, help="0-9, higher first (default 0)")
    create.add_argument(
        "--delay", "--delay-seconds", type=float, metavar="SECONDS", help="run after this delay"
    )
    create.add_argument("--run-at", metavar="RFC3339", help="run at this time (e.g. …T09:00:00Z)")
    create.add_argument("--idempotency-key", metavar="KEY", help="same key → same task")
    create.add_argument("--webhook", metavar="URL", help="result callback URL")
    create.add_argument("--max-attempts", type=int, metavar="N", help="attempts before the DLQ")
    create.add_argument("--file", metavar="PATH", help="JSON Lines of create bodies ('-' = stdin)")
    create.add_argument(
        "--concurrency", type=int, default=16, metavar="N", help="bulk requests at once (16)"
    )

    get = command(
        tasks,
        "get",
        "show a task",
        _get,
        "producer",
        "codeq task get 0123456789ab-Qx3…\ncodeq task get 0123456789ab-Qx3… --json | jq .status",
    )
    get.add_argument("task_id", metavar="ID")

    result = command(
        tasks,
        "result",
        "show a task's result, optionally waiting for it",
        _result,
        "producer",
        """
        codeq task result 0123456789ab-Qx3…
        codeq task result 0123456789ab-Qx3… --wait 120 --json && echo done

        exit codes: 0 COMPLETED, 3 FAILED (dead-lettered too), 4 CANCELLED,
        1 not ended (by the end of --wait) or codeq refused or unreachable, 2 bad input
        """,
    )
    result.add_argument("task_id", metavar="ID")
    result.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait until the task has ended"
    )

    cancel = command(
        tasks,
        "cancel",
        "cancel a task (a leased one: its worker is asked to stop)",
        _cancel,
        "producer",
        'codeq task cancel 0123456789ab-Qx3… --reason "no longer needed"',
    )
    cancel.add_argument("task_id", metavar="ID")
    cancel.add_argument("--reason", help="kept in the task's history")

    history = command(
        tasks,
        "history",
        "show a task's timeline",
        _history,
        "producer",
        "codeq task history 0123456789ab-Qx3…",
    )
    history.add_argument("task_id", metavar="ID")

    add_operator(tasks)


# The states a listing selects (the API's `status`, codeq.domain.TaskState), and the
# columns that tell most about the tasks in each.
STATES = ("ready", "delayed", "in_progress", "dlq", "completed", "failed", "cancelled")
_ENDED_COLUMNS = [("id", "id"), ("attempts", "attempts"), ("error", "error"),
                  ("updatedAt", "ended at")]  # fmt: skip
LIST_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "ready": [("id", "id"), ("priority", "priority"), ("attempts", "attempts"),
              ("retryReason", "retry reason"), ("updatedAt", "ready since")],
    "delayed": [("id", "id"), ("priority", "priority"), ("attempts", "attempts"),
                ("runAt", "runs at"), ("retryReason", "retry reason")],
    "in_progress": [("id", "id"), ("workerId", "worker"), ("leaseUntil", "lease until"),
                    ("attempts", "attempts"), ("cancelRequested", "cancel requested")],
    "dlq": [("id", "id"), ("attempts", "attempts"), ("error", "error"),
            ("lastError", "last error"), ("updatedAt", "dead-lettered at")],
    "completed": _ENDED_COLUMNS,
    "failed": _ENDED_COLUMNS,
    "cancelled": _ENDED_COLUMNS,
}  # fmt: skip


def add_operator(tasks: Subcommands) -> None:
    listing = command(
        tasks,
        "list",
        "list a command's tasks in one state (admin token)",
        _list,
        "admin",
        """
        codeq task list GENERATE_MASTER --status in_progress   # who holds what, until when
        codeq task list GENERATE_MASTER --status ready --limit 20
        codeq task list GENERATE_MASTER --status failed --all --json | jq -r '.tasks[].id'

        Ready tasks are listed in claim order (higher priority first, oldest first);
        the others oldest first (delayed: by run time; in_progress: by lease end).
        """,
    )
    listing.add_argument("queue", metavar="COMMAND")
    listing.add_argument("--status", required=True, choices=STATES, help="which tasks")
    listing.add_argument("--limit", type=int, default=100, metavar="N", help="page size (100)")
    listing.add_argument("--all", action="store_true", help="follow every page to the end")
    listing.add_argument("--cursor", help="start at this nextCursor")

    requeue = command(
        tasks,
        "requeue",
        "end an in-progress task's lease now: back in line (admin token)",
        _requeue,
        "admin",
        """
        codeq task requeue 0123456789ab-Qx3… --reason "worker host died"

        The task is next in line in its priority; its attempts stay counted, and its
        holder's late heartbeat or result gets 409.
        """,
    )
    requeue.add_argument("task_id", metavar="ID")
    requeue.add_argument("--reason", help="kept in the task's history")

    fail = command(
        tasks,
        "fail",
        "end an in-progress task's lease now: FAILED (admin token)",
        _fail,
        "admin",
        """
        codeq task fail 0123456789ab-Qx3… --reason "poison payload"

        Ends the task FAILED with error "failed by admin: REASON", as a FAILED result
        would (its webhook gets the result callback); its holder's late result gets 409.
        """,
    )
    fail.add_argument("task_id", metavar="ID")
    fail.add_argument("--reason", required=True, help="why: in the task's error and history")


# ------------------------------------------------------------ create


def _bulk(args: argparse.Namespace) -> bool:
    """A --file create sends many requests at once: over pooled connections."""
    return args.file is not None


def _defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The create fields given as flags (the body of one task, or line defaults)."""
    if args.event and args.task_command and args.event != args.task_command:
        raise UsageError(f"COMMAND {args.task_command!r} and --event {args.event!r} differ")
    body: dict[str, Any] = {
        "command": args.task_command or args.event,
        "payload": json_object(args.payload, "--payload") if args.payload is not None else None,
        "priority": args.priority,
        "delaySeconds": args.delay,
        "runAt": args.run_at,
        "idempotencyKey": args.idempotency_key,
        "webhook": args.webhook,
        "maxAttempts": args.max_attempts,
    }
    return {k: v for k, v in body.items() if v is not None}


async def _create(client: Client, args: argparse.Namespace) -> int:
    defaults = _defaults(args)
    if args.file is not None:
        return await _create_many(client, defaults, _read_lines(args.file), args)
    if "command" not in defaults:
        raise UsageError("task create needs a COMMAND (or --file)")
    task = await client.create_from({"payload": {}, **defaults})  # payload: required
    if args.json:
        emit_json(task)
    else:
        stdout().print(record_table(task))
    return 0


def _read_lines(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, body) for each non-blank line; a bad line stops everything."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--file: {exc}") from None
    bodies = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            bodies.append((number, json_object(line, f"{path}:{number}")))
    return bodies


async def _create_many(
    client: Client,
    defaults: dict[str, Any],
    lines: list[tuple[int, dict[str, Any]]],
    args: argparse.Namespace,
) -> int:
    bodies = [{"payload": {}, **defaults, **body} for _, body in lines]
    for (number, _), body in zip(lines, bodies, strict=True):
        if not body.get("command"):
            raise UsageError(f"{args.file}:{number}: no command (give COMMAND or a command field)")
    started = time.monotonic()
    done = 0
    with progress() as bar:
        created = bar.add_task("creating", total=len(bodies))

        def on_result(_index: int, _outcome: object) -> None:
            nonlocal done
            done += 1
            bar.advance(created)

        def on_pause(seconds: float) -> None:
            bar.console.print(
                f"codeq: rate limited (429): waiting {seconds:g}s as the daemon asks, then "
                f"going on ({done} of {len(bodies)} done)",
                markup=False,
                highlight=False,
            )

        outcomes = await client.create_many(
            bodies, concurrency=args.concurrency, on_result=on_result, on_pause=on_pause
        )
    failures = [
        (number, outcome)
        for (number, _), outcome in zip(lines, outcomes, strict=True)
        if isinstance(outcome, CodeqError)
    ]
    if args.json:
        for (number, _), outcome in zip(lines, outcomes, strict=True):
            if isinstance(outcome, CodeqError):
                emit_json_line({"line": number, "status": outcome.status, "error": outcome.message})
            else:
                emit_json_line(outcome)
    else:
        for number, error in failures[:20]:
            note(f"{args.file}:{number}: {error}")
        if len(failures) > 20:
            note(f"… and {len(failures) - 20} more failed lines")
    took = time.monotonic() - started
    note(f"created {len(bodies) - len(failures)} of {len(bodies)} tasks in {took:.1f}s")
    return 1 if failures else 0


# ------------------------------------------------------------ read and cancel


async def _get(client: Client, args: argparse.Namespace) -> int:
    task = await Producer(client).get(args.task_id)
    if args.json:
        emit_json(task)
    else:
        stdout().print(record_table(task))
    return 0


# `task result`'s exit code says how the task ended, so `--wait` works in scripts.
RESULT_EXIT_CODES = {"COMPLETED": 0, "FAILED": 3, "CANCELLED": 4}
NOT_ENDED_EXIT_CODE = 1  # also codeq refused or unreachable


async def _result(client: Client, args: argparse.Namespace) -> int:
    answer = await Producer(client).result(args.task_id, wait=args.wait)
    task, result = answer["task"], answer.get("result")
    if args.json:
        emit_json(answer)
    else:
        _show_result(task, result)
    status = str(task.get("status"))
    if status not in RESULT_EXIT_CODES and args.wait:
        note(f"task {args.task_id} is still {status} after {args.wait:g}s")
    return RESULT_EXIT_CODES.get(status, NOT_ENDED_EXIT_CODE)


def _show_result(task: JsonObject, result: JsonObject | None) -> None:
    status = task.get("status")
    shown: dict[str, Any] = {"id": task.get("id"), "status": status}
    if result is not None:
        shown.update(
            completedAt=result.get("completedAt"),
            result=result.get("result"),
            error=result.get("error"),
            artifacts=result.get("artifacts") or None,
        )
    elif status == "FAILED" and task.get("error") == "MAX_ATTEMPTS":
        attempts = task.get("attempts")
        shown["result"] = f"(none: dead-lettered after {attempts} attempt(s))"
    elif status in RESULT_EXIT_CODES:
        shown["result"] = f"(none: {str(status).lower()})"
    else:
        shown["result"] = "(none yet: not ended)"
    shown.setdefault("error", task.get("error"))
    shown["lastError"] = task.get("lastError")
    stdout().print(record_table({k: v for k, v in shown.items() if v is not None}))


async def _cancel(client: Client, args: argparse.Namespace) -> int:
    answer = await Producer(client).cancel(args.task_id, args.reason)
    if args.json:
        emit_json(answer)
    elif answer.get("status") == "cancel_requested":
        note(f"task {args.task_id} is in progress: its worker is asked to stop")
    else:
        stdout().print(record_table(answer))
    return 0


async def _history(client: Client, args: argparse.Namespace) -> int:
    answer = await client.history(args.task_id)
    if args.json:
        emit_json(answer)
        return 0
    rows = [
        {
            "at": entry.get("at"),
            "event": entry.get("event"),
            "detail": orjson.dumps(
                {k: v for k, v in entry.items() if k not in ("at", "event")}
            ).decode(),
        }
        for entry in answer.get("history", [])
    ]
    stdout().print(rows_table(rows, [("at", "at"), ("event", "event"), ("detail", "detail")]))
    return 0


# ------------------------------------------------------------ operator


async def _list(client: Client, args: argparse.Namespace) -> int:
    tasks: list[JsonObject] = []
    cursor = args.cursor
    while True:
        page = await client.tasks(args.queue, args.status, cursor=cursor, limit=args.limit)
        tasks.extend(page["tasks"])
        cursor = page.get("nextCursor")
        if not args.all or cursor is None:
            break
    if args.json:
        emit_json({"command": args.queue, "status": args.status, "tasks": tasks,
                   "nextCursor": cursor})  # fmt: skip
        return 0
    if tasks:
        numeric = ("priority", "attempts")
        stdout().print(rows_table(tasks, LIST_COLUMNS[args.status], numeric=numeric))
    note(f"{len(tasks)} {args.status} task(s) of {args.queue}")
    if cursor is not None:
        note(f"more: --cursor {cursor} (or --all)")
    return 0


async def _requeue(client: Client, args: argparse.Namespace) -> int:
    answer = await client.requeue(args.task_id, args.reason)
    if args.json:
        emit_json(answer)
    elif answer["status"] == "cancelled":
        note(f"task {args.task_id} had a cancel requested: it is CANCELLED now")
    else:
        note(f"task {args.task_id} is back in line (attempts {answer['task']['attempts']})")
    return 0


async def _fail(client: Client, args: argparse.Namespace) -> int:
    answer = await client.fail(args.task_id, args.reason)
    if args.json:
        emit_json(answer)
    else:
        stdout().print(record_table(answer["task"]))
    return 0
