"""The `codeq` subcommands that talk to a running daemon over its HTTP API
(`task`, `worker`, `queue`, `schedule`), built on `codeq.client`. `codeq.cli` registers them."""

from __future__ import annotations

from codeq.commands import queue, schedule, task, worker
from codeq.commands.base import Subcommands, run

__all__ = ["add_commands", "run"]


def add_commands(commands: Subcommands) -> None:
    """Adds `task`, `worker`, `queue` and `schedule` to the `codeq` parser."""
    task.add(commands)
    worker.add(commands)
    queue.add(commands)
    schedule.add(commands)
