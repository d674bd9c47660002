"""`codeq queue inspect|pause|resume|purge|dlq|redrive`: the operator's commands
(an admin token)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from codeq.client import Client, JsonObject
from codeq.commands.base import Subcommands, UsageError, command, group, split_names
from codeq.commands.output import emit_json, note, progress, rows_table, stdout

STATS_COLUMNS = [
    ("command", "command"),
    ("ready", "ready"),
    ("delayed", "delayed"),
    ("inProgress", "in progress"),
    ("dlq", "dlq"),
    ("paused", "paused"),
]
DLQ_COLUMNS = [
    ("id", "id"),
    ("priority", "priority"),
    ("attempts", "attempts"),
    ("error", "error"),
    ("lastError", "last error"),
    ("redriveCount", "redrives"),
    ("deadLetteredAt", "dead-lettered at"),
]
REDRIVE_BATCH = 500  # ids per redrive request when not paced


def add(commands: Subcommands) -> None:
    queues = group(
        commands,
        "queue",
        "inspect and operate queues (admin token)",
        """
        codeq queue inspect
        codeq queue pause GENERATE_MASTER
        codeq queue dlq GENERATE_MASTER --error timeout
        codeq queue redrive GENERATE_MASTER --error timeout --rate 50 --dry-run
        """,
    )
    inspect = command(
        queues,
        "inspect",
        "show ready/delayed/in-progress/dlq counts per command",
        _inspect,
        "admin",
        "codeq queue inspect\ncodeq queue inspect GENERATE_MASTER --json",
    )
    inspect.add_argument("queue", nargs="?", metavar="COMMAND", help="one command (default all)")

    for name, help, run in (
        ("pause", "stop claims of a command (its tasks stay)", _pause),
        ("resume", "let claims of a paused command go on", _resume),
    ):
        sub = command(queues, name, help, run, "admin", f"codeq queue {name} GENERATE_MASTER")
        sub.add_argument("queue", metavar="COMMAND")

    purge = command(
        queues,
        "purge",
        "delete a command's ready and delayed tasks",
        _purge,
        "admin",
        "codeq queue purge GENERATE_MASTER          # asks first\n"
        "codeq queue purge GENERATE_MASTER --yes    # for scripts",
    )
    purge.add_argument("queue", metavar="COMMAND")
    purge.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    dlq = command(
        queues,
        "dlq",
        "list a command's dead-lettered tasks, oldest first",
        _dlq,
        "admin",
        """
        codeq queue dlq GENERATE_MASTER
        codeq queue dlq GENERATE_MASTER --error timeout --limit 20
        codeq queue dlq GENERATE_MASTER --all --json | jq -r '.tasks[].id'
        """,
    )
    dlq.add_argument("queue", metavar="COMMAND")
    dlq.add_argument("--error", metavar="TEXT", help="error or lastError contains TEXT")
    dlq.add_argument("--limit", type=int, default=100, metavar="N", help="page size (100)")
    dlq.add_argument("--all", action="store_true", help="follow every page to the end")
    dlq.add_argument("--cursor", help="start at this nextCursor")
    dlq.add_argument("--older-than", type=int, metavar="SECONDS", help="dead-lettered before")
    dlq.add_argument("--newer-than", type=int, metavar="SECONDS", help="dead-lettered within")

    redrive = command(
        queues,
        "redrive",
        "move dead-lettered tasks back to ready (attempts reset, lineage kept)",
        _redrive,
        "admin",
        """
        codeq queue redrive GENERATE_MASTER --ids 0123456789ab-Qx3… 0123456789ab-Rt9…
        codeq queue redrive GENERATE_MASTER --error timeout --limit 500 --dry-run
        codeq queue redrive GENERATE_MASTER --all --limit 10000 --rate 50
        """,
    )
    redrive.add_argument("queue", metavar="COMMAND")
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", nargs="+", metavar="ID", help="these tasks (space or comma list)")
    which.add_argument("--error", metavar="TEXT", help="tasks whose error contains TEXT")
    which.add_argument("--all", action="store_true", help="any task, oldest first")
    redrive.add_argument("--limit", type=int, metavar="N", help="at most N (100; up to 10000)")
    redrive.add_argument("--rate", type=float, metavar="PER_SECOND", help="pace the moves")
    redrive.add_argument("--dry-run", action="store_true", help="show what would move")


# ------------------------------------------------------------ inspect, pause, purge


async def _inspect(client: Client, args: argparse.Namespace) -> int:
    rows = [await client.queue(args.queue)] if args.queue else await client.queues()
    if args.json:
        emit_json(rows[0] if args.queue else rows)  # the admin API's own answer
    elif not rows:
        note("no queues yet")
    else:
        numeric = ("ready", "delayed", "inProgress", "dlq")
        stdout().print(rows_table(rows, STATS_COLUMNS, numeric=numeric))
    return 0


async def _pause(client: Client, args: argparse.Namespace) -> int:
    return _said(await client.pause(args.queue), args, f"{args.queue} paused")


async def _resume(client: Client, args: argparse.Namespace) -> int:
    return _said(await client.resume(args.queue), args, f"{args.queue} resumed")


def _said(answer: JsonObject, args: argparse.Namespace, text: str) -> int:
    if args.json:
        emit_json(answer)
    else:
        stdout().print(text)
    return 0


async def _purge(client: Client, args: argparse.Namespace) -> int:
    if not args.yes:
        stats = await client.queue(args.queue)
        waiting = stats["ready"] + stats["delayed"]
        if not sys.stdin.isatty():
            raise UsageError("queue purge: stdin is not a terminal; pass --yes to confirm")
        question = (
            f"Delete {waiting} ready and delayed task(s) of {args.queue}? "
            "In-progress and dead-lettered tasks stay. [y/N] "
        )
        print(question, end="", file=sys.stderr, flush=True)
        if (await asyncio.to_thread(input)).strip().lower() not in ("y", "yes"):
            note("nothing purged")
            return 1
    answer = await client.purge(args.queue)
    return _said(answer, args, f"{args.queue}: purged {answer['purged']} task(s)")


# ------------------------------------------------------------ dead letters


async def _dlq(client: Client, args: argparse.Namespace) -> int:
    tasks: list[JsonObject] = []
    cursor = args.cursor
    while True:
        page = await client.dlq(
            args.queue,
            cursor=cursor,
            limit=args.limit,
            error=args.error,
            older_than_seconds=args.older_than,
            newer_than_seconds=args.newer_than,
        )
        tasks.extend(page["tasks"])
        cursor = page.get("nextCursor")
        if not args.all or cursor is None:
            break
    if args.json:
        emit_json({"tasks": tasks, "nextCursor": cursor})
        return 0
    if tasks:
        stdout().print(rows_table(tasks, DLQ_COLUMNS, numeric=("priority", "attempts")))
    note(f"{len(tasks)} dead-lettered task(s) of {args.queue}")
    if cursor is not None:
        note(f"more: --cursor {cursor} (or --all)")
    return 0


async def _redrive(client: Client, args: argparse.Namespace) -> int:
    ids = [i for given in args.ids or () for i in split_names(given)]
    selector: dict[str, Any] = {"error": args.error, "all": args.all, "limit": args.limit}
    if ids:
        planned, skipped = ids, []
    else:
        # Plan first (a dry run names the tasks), then move them by id in batches,
        # so the progress bar counts real moves.
        plan = await client.redrive(args.queue, dry_run=True, **selector)
        planned, skipped = plan["ids"], plan["skipped"]
    if args.dry_run:
        if ids:
            plan = await client.redrive(args.queue, ids=ids, dry_run=True)
            planned, skipped = plan["ids"], plan["skipped"]
        return _redrive_report(args, planned, skipped, dry_run=True)

    batch = REDRIVE_BATCH if not args.rate else max(1, min(REDRIVE_BATCH, round(args.rate)))
    moved: list[str] = []
    with progress() as bar:
        meter = bar.add_task("redriving", total=len(planned))
        for start in range(0, len(planned), batch):
            chunk = planned[start : start + batch]
            answer = await client.redrive(args.queue, ids=chunk, rate_per_second=args.rate)
            moved.extend(answer["ids"])
            skipped.extend(answer["skipped"])
            bar.advance(meter, len(chunk))
    return _redrive_report(args, moved, skipped, dry_run=False)


def _redrive_report(
    args: argparse.Namespace, ids: list[str], skipped: list[str], *, dry_run: bool
) -> int:
    if args.json:
        emit_json({"redriven": len(ids), "ids": ids, "skipped": skipped, "dryRun": dry_run})
        return 0
    verb = "would redrive" if dry_run else "redrove"
    if dry_run and ids:
        stdout().print("\n".join(ids))
    note(f"{verb} {len(ids)} task(s) of {args.queue}")
    if skipped:
        note(f"skipped {len(skipped)} (not in the DLQ): {' '.join(skipped[:10])}")
    return 0
