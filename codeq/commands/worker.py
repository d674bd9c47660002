"""`codeq worker start`: claims tasks and runs a shell command for each.

The handler contract: CMD runs through /bin/sh with the claimed task (codeQ's
task JSON, including its leaseToken) on stdin and CODEQ_TASK_ID,
CODEQ_TASK_COMMAND, CODEQ_TASK_ATTEMPTS in its environment.
- exit 0: stdout is the result, a JSON object (empty → {}); the task ends
  COMPLETED (or is given back with --ack abandon). A codeQ-style envelope
  {"status":"COMPLETED","result":{…}} or {"status":"FAILED","error":"…"} works too;
- exit non-zero, or stdout that is not a JSON object: the task is nacked with the
  tail of stderr as reason (retried after a backoff), or ends FAILED with
  --on-failure fail.
The lease is renewed every lease/3 seconds while CMD runs. Ctrl-C or SIGTERM: no
new claims, running handlers get --grace seconds, then they are killed and their
tasks abandoned; exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from asyncio.subprocess import DEVNULL, PIPE
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from codeq.client import (
    Abandon,
    Client,
    Complete,
    Fail,
    JsonObject,
    Leave,
    Nack,
    Outcome,
    Worker,
)
from codeq.commands.base import Subcommands, UsageError, command, group, split_names
from codeq.commands.output import emit_json, note

REASON_TAIL = 900  # characters of stderr kept as a nack reason (the API keeps 1024)
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
# POSIX sh's reserved words and builtins: no program on PATH to look for.
SHELL_WORDS = frozenset((
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in",
    "then", "until", "while", ".", ":", "[", "alias", "bg", "break", "cd", "command",
    "continue", "echo", "eval", "exec", "exit", "export", "false", "fg", "getopts", "hash",
    "jobs", "kill", "local", "printf", "pwd", "read", "readonly", "return", "set", "shift",
    "test", "times", "trap", "true", "type", "ulimit", "umask", "unalias", "unset", "wait",
))  # fmt: skip
KILL_GRACE_SECONDS = 2.0
ENVELOPE_KEYS = frozenset({"status", "result", "error", "artifacts"})


def add(commands: Subcommands) -> None:
    workers = group(
        commands,
        "worker",
        "run tasks with a shell command (worker token)",
        "codeq worker start --events GENERATE_MASTER --concurrency 4 --handler ./render.sh",
    )
    start = command(
        workers,
        "start",
        "claim tasks and run a handler command for each until interrupted",
        _start,
        "worker",
        """
        codeq worker start --events GENERATE_MASTER --concurrency 4 --handler ./render.sh
        codeq worker start --events A,B --handler 'jq "{echo: .payload}"' --lease 60
        codeq worker start --events A --handler ./h.sh --ack abandon --max-tasks 1  # dry run

        The handler gets the task JSON on stdin and prints the result JSON on
        stdout (empty = {}); exit non-zero to nack (the reason is stderr's tail).
        It is checked before the first claim (shell syntax, program found and
        executable): a handler that cannot run is exit 2, no task touched.
        Ctrl-C: stop claiming (a parked claim at once), wait --grace seconds for
        running handlers, then kill them and abandon their tasks (a second Ctrl-C
        skips the wait).
        """,
        pooled=True,
    )
    start.add_argument(
        "--events",
        "--commands",
        dest="events",
        metavar="A,B",
        help="commands to claim (default: all the token allows)",
    )
    start.add_argument("--handler", required=True, metavar="CMD", help="shell command per task")
    start.add_argument("--concurrency", type=int, default=1, metavar="N", help="handlers at once")
    start.add_argument(
        "--lease",
        "--lease-seconds",
        type=int,
        default=300,
        metavar="SECONDS",
        help="lease per claim (300)",
    )
    start.add_argument(
        "--poll",
        "--wait-seconds",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="claim long-poll (5, max 30)",
    )
    start.add_argument(
        "--ack",
        choices=("complete", "abandon", "nack", "none"),
        default="complete",
        help="on success: complete the task; give it back at once (abandon) or after "
        "--nack-delay (nack); or report nothing and let the lease run out (none)",
    )
    start.add_argument(
        "--nack-delay",
        type=int,
        metavar="SECONDS",
        help="delay of every nack this worker sends (default: the daemon's backoff)",
    )
    start.add_argument(
        "--on-failure",
        choices=("nack", "fail"),
        default="nack",
        help="on handler failure: nack (retry later) or end the task FAILED",
    )
    start.add_argument(
        "--grace", type=float, default=30.0, metavar="SECONDS", help="drain time on stop (30)"
    )
    start.add_argument("--max-tasks", type=int, metavar="N", help="stop after N tasks")
    start.add_argument("--quiet", "-q", action="store_true", help="no line per task")


class ShellHandler:
    """Runs one shell command per task (see the module docstring)."""

    def __init__(
        self, command: str, *, on_failure: str, ack: str, nack_delay: int | None = None
    ) -> None:
        self.command = command
        self.on_failure = on_failure
        self.ack = ack
        self.nack_delay = nack_delay

    async def __call__(self, task: JsonObject) -> Outcome:
        env = {
            **os.environ,
            "CODEQ_TASK_ID": str(task.get("id", "")),
            "CODEQ_TASK_COMMAND": str(task.get("command", "")),
            "CODEQ_TASK_ATTEMPTS": str(task.get("attempts", "")),
        }
        proc = await asyncio.create_subprocess_shell(
            self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the worker, which decides
        )
        assert proc.stdin and proc.stdout and proc.stderr
        try:
            _, out, err = await asyncio.gather(
                _feed(proc.stdin, orjson.dumps(task)), proc.stdout.read(), proc.stderr.read()
            )
            await proc.wait()
        except asyncio.CancelledError:
            await _kill(proc)
            raise
        if proc.returncode != 0:
            code = proc.returncode or 0
            how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
            return self._failed(f"{how}: {_tail(err)}".rstrip(": "))
        return self._succeeded(out, err)

    def _succeeded(self, out: bytes, err: bytes) -> Outcome:
        try:
            value: Any = orjson.loads(out) if out.strip() else {}
        except orjson.JSONDecodeError as exc:
            return self._failed(f"stdout is not JSON ({exc}): {_tail(out)}")
        if not isinstance(value, dict):
            return self._failed(f"stdout must be a JSON object, got {_tail(out)}")
        if value.get("status") in ("COMPLETED", "FAILED") and set(value) <= ENVELOPE_KEYS:
            if value["status"] == "FAILED":
                return Fail(str(value.get("error") or _tail(err) or "handler reported FAILED"))
            result = value.get("result")
            value = result if isinstance(result, dict) else {}
        match self.ack:
            case "abandon":
                return Abandon()
            case "nack":
                return Nack("--ack nack", self.nack_delay)
            case "none":
                return Leave()
        return Complete(value)

    def _failed(self, reason: str) -> Outcome:
        return Fail(reason) if self.on_failure == "fail" else Nack(reason, self.nack_delay)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Stops a handler's whole process group: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE_SECONDS)
            break
        except TimeoutError:
            continue
    await proc.wait()


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Writes the task to the handler's stdin and closes it. A handler that exits
    without reading it (EPIPE, or the pipe already closed) is normal: its exit code
    and stdout decide the task's outcome."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if not stdin.is_closing():  # no callback runs before write(): no race
            stdin.write(data)
            await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


def _tail(raw: bytes) -> str:
    text = raw.decode(errors="replace").strip()
    return text if len(text) <= REASON_TAIL else "…" + text[-REASON_TAIL:]


async def handler_problem(command: str, environ: Mapping[str, str]) -> str | None:
    """Why the --handler command cannot run, as far as can be told without running
    it: its shell syntax, and its program (the first word, unless the shell itself
    or an expansion gives it) found and executable. None when nothing is wrong."""
    check = await asyncio.create_subprocess_exec(
        "/bin/sh", "-n", "-c", command, stdin=DEVNULL, stdout=DEVNULL, stderr=PIPE
    )
    _, err = await check.communicate()
    if check.returncode != 0:
        return f"not valid shell: {_tail(err)}"
    return await asyncio.to_thread(_program_problem, command, environ)


def _program_problem(command: str, environ: Mapping[str, str]) -> str | None:
    program = _program(command)
    if program is None:
        return None
    if "/" not in program:
        found = shutil.which(program, path=environ.get("PATH"))
        return None if found else f"{program!r} is not a command on PATH"
    path = Path(program).expanduser()
    if not path.exists():
        return f"{program} does not exist (from {Path.cwd()})"
    if path.is_dir():
        return f"{program} is a directory"
    if not os.access(path, os.X_OK):
        return f"{program} is not executable (chmod +x {program})"
    return None


def _program(command: str) -> str | None:
    """The program a simple shell command runs, or None when the shell decides it
    (a builtin or keyword, an expansion, a subshell) or the line is past simple."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:
        return None
    for word in words:
        if ASSIGNMENT.fullmatch(word):
            continue  # NAME=value before the program
        if word in SHELL_WORDS or any(c in word for c in "$`(){}<>|&;*?[!"):
            return None
        return word
    return None


async def _start(client: Client, args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if not 1 <= args.lease <= 86_400:
        raise UsageError("--lease must be between 1 and 86400 seconds")
    if not 0 <= args.poll <= 30:
        raise UsageError("--poll must be between 0 and 30 seconds")
    if args.nack_delay is not None and not 0 <= args.nack_delay <= 86_400:
        raise UsageError("--nack-delay must be between 0 and 86400 seconds")
    problem = await handler_problem(args.handler, os.environ)
    if problem is not None:
        raise UsageError(f"--handler {args.handler!r}: {problem}")
    _log_to_stderr(quiet=args.quiet)
    worker = Worker(
        client,
        split_names(args.events),
        ShellHandler(
            args.handler, on_failure=args.on_failure, ack=args.ack, nack_delay=args.nack_delay
        ),
        concurrency=args.concurrency,
        lease_seconds=args.lease,
        wait_seconds=args.poll,
        grace_seconds=args.grace,
        max_tasks=args.max_tasks,
    )

    signals = 0

    def on_signal(name: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            note(
                f"{name}: stopping: no new claims; running handlers get {args.grace:g}s "
                "(Ctrl-C again: stop them now)"
            )
        else:
            note(f"{name} again: stopping running handlers now; their tasks go back")
        worker.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    commands = args.events or "every command the token allows"
    note(f"worker: claiming {commands} from {client.base_url}, concurrency {args.concurrency}")
    try:
        stats = await worker.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    summary = {
        "claimed": stats.claimed,
        "completed": stats.completed,
        "failed": stats.failed,
        "nacked": stats.nacked,
        "abandoned": stats.abandoned,
        "left": stats.left,
        "lost": stats.lost,
    }
    if args.json:
        emit_json(summary)
    note("worker stopped: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 0


def _log_to_stderr(*, quiet: bool) -> None:
    """The client's log lines (one per task, warnings) as `codeq worker: …` on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("codeq worker: %(message)s"))
    logger = logging.getLogger("codeq.client")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
