"""The `codeq` subcommands that talk to a running daemon over its HTTP API
(`task`, `worker`, `queue`), built on `codeq.client`. `codeq.cli` registers them."""

from __future__ import annotations

from codeq.commands import queue, task, worker
from codeq.commands.base import Subcommands, run

__all__ = ["add_commands", "run"]


def add_commands(commands: Subcommands) -> None:
    """Adds `task`, `worker` and `queue` to the `codeq` parser."""
    task.add(commands)
    worker.add(commands)
    queue.add(commands)
