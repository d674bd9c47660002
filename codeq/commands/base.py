"""What every client command shares: connection flags, one way to run, one way to fail."""

from __future__ import annotations

import argparse
import asyncio
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import orjson

from codeq.client import Client, CodeqError
from codeq.commands import connection
from codeq.commands.output import note

Run = Callable[[Client, argparse.Namespace], Awaitable[int]]
Pooled = bool | Callable[[argparse.Namespace], bool]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class UsageError(Exception):
    """Bad input on the command line (exit 2); the message names the option."""


# The connection flags, accepted before the subcommand too (name → takes a value).
GLOBAL_FLAGS = {"url": True, "token": True, "profile": True, "timeout": True, "json": False}
DEFAULT_TIMEOUT = 30.0
URL_HELP = (
    "daemon address: http(s)://host:port or unix:///path/to/codeq.sock "
    f"(env CODEQ_URL; default {connection.DEFAULT_URL})"
)
TOKEN_HELP = "bearer token (env CODEQ_TOKEN); never printed"
PROFILE_HELP = "profile of ~/.codeq/config.yaml (env CODEQ_PROFILE, file env CODEQ_CONFIG)"
TIMEOUT_HELP = f"seconds per request (default {DEFAULT_TIMEOUT:g})"
JSON_HELP = "print JSON on stdout, for scripts"


def connection_flags() -> argparse.ArgumentParser:
    """--url/--token/--profile/--timeout/--json, for every command that calls a daemon."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("connection (flags > CODEQ_* env > profile file)")
    group.add_argument("--url", help=URL_HELP)
    group.add_argument("--token", help=TOKEN_HELP)
    group.add_argument("--profile", help=PROFILE_HELP)
    group.add_argument("--timeout", type=float, help=TIMEOUT_HELP)
    flags.add_argument("--json", action="store_true", help=JSON_HELP)
    return flags


def global_flags(parser: argparse.ArgumentParser) -> None:
    """The connection flags on `codeq` itself (`codeq --url URL task get ID`); they
    land in `global_<name>` and merge_global_flags hands them to the subcommand."""
    group = parser.add_argument_group("connection, for the client commands")
    group.add_argument("--url", dest="global_url", metavar="URL", help=URL_HELP)
    group.add_argument("--token", dest="global_token", metavar="TOKEN", help=TOKEN_HELP)
    group.add_argument("--profile", dest="global_profile", metavar="PROFILE", help=PROFILE_HELP)
    group.add_argument(
        "--timeout", dest="global_timeout", metavar="SECONDS", type=float, help=TIMEOUT_HELP
    )
    group.add_argument("--json", dest="global_json", action="store_true", help=JSON_HELP)


def merge_global_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Gives each connection flag given before the subcommand to the subcommand (one
    given after it wins); a flag the subcommand has no use for is a usage error."""
    for name in GLOBAL_FLAGS:
        value = getattr(args, f"global_{name}")
        if value is None or value is False:
            continue
        if not hasattr(args, name):
            parser.error(f"--{name} is not an option of `codeq {args.command}`")
        if getattr(args, name) in (None, False):
            setattr(args, name, value)
    if getattr(args, "timeout", 0) is None:
        args.timeout = DEFAULT_TIMEOUT


def command(
    parent: Subcommands,
    name: str,
    help: str,
    run: Run,
    role: connection.Role,
    examples: str,
    pooled: Pooled = False,
) -> argparse.ArgumentParser:
    """A client subcommand: its help, examples epilog, connection flags and runner.
    pooled (or pooled(args)): its client keeps connections in an aiohttp pool, for
    many or concurrent requests; else plain connections, which start faster."""
    parser = parent.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[connection_flags()],
    )
    parser.set_defaults(remote=run, role=role, pooled=pooled)
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
        return asyncio.run(_run(args, conn))
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
    pooled = args.pooled(args) if callable(args.pooled) else args.pooled
    async with Client(conn.url, conn.token, timeout=args.timeout, pooled=pooled) as client:
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
