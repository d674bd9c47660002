"""How the CLI shows things: tables on stdout for people, JSON for scripts with
--json, progress and messages on stderr only (so --json stdout stays parseable).
rich leaves out colours and animation when the stream is not a terminal; it is
imported only when a table or a progress bar is shown (--json does without)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

# Off a terminal (a pipe, a file) tables are not folded to 80 columns.
PIPE_WIDTH = 400


def stdout() -> Console:
    from rich.console import Console

    return Console(
        file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else PIPE_WIDTH
    )


def stderr() -> Console:
    from rich.console import Console

    return Console(
        file=sys.stderr, highlight=False, width=None if sys.stderr.isatty() else PIPE_WIDTH
    )


def emit_json(value: Any) -> None:
    """Prints one JSON document on stdout."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def emit_json_line(value: Any) -> None:
    """Prints one compact JSON document on its own line (JSON Lines)."""
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A message for the person at the terminal (stderr)."""
    print(f"codeq: {message}", file=sys.stderr, flush=True)


def cell(value: Any) -> str:
    """A value as table text: JSON for objects and lists, '' for none."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def record_table(record: Mapping[str, Any], title: str | None = None) -> Table:
    """One object as a two-column field/value table."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in record.items():
        table.add_row(key, Text(cell(value)))
    return table


def rows_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    numeric: Iterable[str] = (),
    title: str | None = None,
) -> Table:
    """A table of objects: columns are (key, header)."""
    from rich.table import Table
    from rich.text import Text

    right = set(numeric)
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for key, header in columns:
        table.add_column(
            header,
            justify="right" if key in right else "left",
            overflow="fold",
            no_wrap=key == "id",
        )
    for row in rows:
        table.add_row(*(Text(cell(row.get(key))) for key, _ in columns))
    return table


def progress() -> Progress:
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = stderr()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
