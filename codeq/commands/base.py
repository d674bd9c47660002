"""What every client command shares: connection flags, one way to run, one way to fail."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import orjson
import uvloop

from codeq.client import Client, CodeqError
from codeq.commands import connection
from codeq.commands.output import note

Run = Callable[[Client, argparse.Namespace], Awaitable[int]]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """Bad input on the command line (exit 2); the message names the option."""


def connection_flags() -> argparse.ArgumentParser:
    """--url/--token/--profile/--timeout/--json, for every command that calls a daemon."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("connection (flags > CODEQ_* env > profile file)")
    group.add_argument(
        "--url", help=f"daemon base URL (env CODEQ_URL; default {connection.DEFAULT_URL})"
    )
    group.add_argument("--token", help="bearer token (env CODEQ_TOKEN); never printed")
    group.add_argument(
        "--profile",
        help="profile of ~/.codeq/config.yaml (env CODEQ_PROFILE, file env CODEQ_CONFIG)",
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request (default 30)"
    )
    flags.add_argument("--json", action="store_true", help="print JSON on stdout, for scripts")
    return flags


def command(
    parent: Subcommands,
    name: str,
    help: str,
    run: Run,
    role: connection.Role,
    examples: str,
) -> argparse.ArgumentParser:
    """A client subcommand: its help, examples epilog, connection flags and runner."""
    parser = parent.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[connection_flags()],
    )
    parser.set_defaults(remote=run, role=role)
    return parser


def group(parent: Subcommands, name: str, help: str, examples: str) -> Subcommands:
    """A command group (`task`, `queue`, …) whose help lists its subcommands."""
    parser = parent.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")


def run(args: argparse.Namespace) -> int:
    """Runs a client command: 0 on success, 1 when codeq refused or was unreachable,
    2 for bad input; errors are one line on stderr."""
    try:
        conn = connection.resolve(args.role, url=args.url, token=args.token, profile=args.profile)
    except connection.SettingsError as exc:
        note(str(exc))
        return 2
    try:
        return uvloop.run(_run(args, conn))
    except UsageError as exc:
        note(str(exc))
        return 2
    except CodeqError as exc:
        hint = ""
        if exc.status == 401 and conn.token is None:
            hint = " (no token: pass --token, set CODEQ_TOKEN or use a profile)"
        note(f"{exc}{hint}")
        return 1
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace, conn: connection.Connection) -> int:
    async with Client(conn.url, conn.token, timeout=args.timeout) as client:
        code: int = await args.remote(client, args)
        return code


def json_object(text: str, what: str) -> dict[str, Any]:
    """Parses a JSON object given on the command line."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object")
    return value


def split_names(text: str | None) -> list[str]:
    """A,B,C → [A, B, C] (blanks dropped)."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]
