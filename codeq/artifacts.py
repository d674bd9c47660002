"""Inline artifacts: the outputs a worker sends with its result as `contentBase64`
(codeQ's uploader), kept in a local directory and served back by the daemon.

Layout: <dir>/<tenant tag>/<task id>/<name>, with the content types in
<task id>/.types.json. A result's artifacts are written to a staging folder first
and moved into place only once the store has accepted the result, so a result the
store refused (not the owner, already ended) leaves nothing behind; a crash between
the two leaves a staging folder that the next prune removes. Files go away with
their task: the janitor prunes the folders of tasks the store no longer has.

All file work runs in a thread (asyncio.to_thread): nothing blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from codeq.domain import Artifact, InlineArtifact, TooLarge

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CONTENT_TYPE_RE = re.compile(r"[\w.+-]{1,63}/[\w.+-]{1,63}(; ?[\w.+-]{1,31}=[\w.+-]{1,63}){0,3}")
_TYPES = ".types.json"
_STAGING = ".staging-"
STAGING_MAX_AGE_SECONDS = 600  # a staging folder older than this was left by a crash


def artifact_url(task_id: str, name: str) -> str:
    """Where the daemon serves an artifact back (a path on the daemon's own base URL)."""
    return f"/v1/codeq/tasks/{task_id}/artifacts/{quote(name)}"


@dataclass(frozen=True, slots=True)
class Staged:
    """A result's artifacts written but not yet in place: commit() or discard()."""

    folder: Path
    final: Path
    artifacts: tuple[Artifact, ...]


class ArtifactStore:
    """A size-capped store of inline artifacts in a local directory."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def _task_dir(self, tag: str, task_id: str) -> Path:
        return self.directory / tag / task_id

    async def stage(self, tag: str, task_id: str, items: Sequence[InlineArtifact]) -> Staged:
        """Writes a result's artifacts to a staging folder; TooLarge past the cap."""
        for item in items:
            if len(item.content) > self.max_bytes:
                raise TooLarge(
                    f"artifact {item.name!r} is {len(item.content)} bytes; the most is "
                    f"{self.max_bytes} (artifactMaxBytes)"
                )
        final = self._task_dir(tag, task_id)
        folder = final.parent / f"{_STAGING}{task_id}-{secrets.token_hex(4)}"
        await asyncio.to_thread(_write, folder, items)
        urls = tuple(Artifact(item.name, artifact_url(task_id, item.name)) for item in items)
        return Staged(folder, final, urls)

    async def commit(self, staged: Staged) -> None:
        """Moves staged artifacts into place (the store accepted the result)."""
        await asyncio.to_thread(_replace, staged.folder, staged.final)

    async def discard(self, staged: Staged) -> None:
        await asyncio.to_thread(shutil.rmtree, staged.folder, True)

    async def read(self, tag: str, task_id: str, name: str) -> tuple[bytes, str] | None:
        """An artifact's content and type, or None."""
        if not NAME_RE.fullmatch(name):
            return None
        return await asyncio.to_thread(_read, self._task_dir(tag, task_id), name)

    async def prune(
        self, tag: str, alive: Callable[[list[str]], Awaitable[set[str]]], *, batch: int = 500
    ) -> int:
        """Removes the folders of the tenant's tasks the store no longer has (asking
        `alive` which of up to `batch` ids exist, one round trip each), and staging
        left by a crash; returns how many folders it removed."""
        tenant = self.directory / tag
        folders = await asyncio.to_thread(_listing, tenant)
        stale = time.time() - STAGING_MAX_AGE_SECONDS  # younger ones may be in flight
        gone = [n for n, mtime in folders if n.startswith(_STAGING) and mtime < stale]
        tasks = [n for n, _ in folders if not n.startswith(_STAGING)]
        for start in range(0, len(tasks), batch):
            chunk = tasks[start : start + batch]
            living = await alive(chunk)
            gone += [name for name in chunk if name not in living]
        for name in gone:
            await asyncio.to_thread(shutil.rmtree, tenant / name, True)
        return len(gone)


def _write(folder: Path, items: Sequence[InlineArtifact]) -> None:
    folder.mkdir(parents=True, mode=0o700)
    for item in items:
        (folder / item.name).write_bytes(item.content)
    types = {item.name: item.content_type for item in items}
    (folder / _TYPES).write_text(json.dumps(types))


def _replace(folder: Path, final: Path) -> None:
    if final.exists():  # a result is recorded once; a leftover folder is stale
        shutil.rmtree(final, ignore_errors=True)
    os.replace(folder, final)


def _read(folder: Path, name: str) -> tuple[bytes, str] | None:
    try:
        content = (folder / name).read_bytes()
        types = json.loads((folder / _TYPES).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None
    return content, str(types.get(name) or "application/octet-stream")


def _listing(folder: Path) -> list[tuple[str, float]]:
    """The sub-folders of a folder with their modification times."""
    try:
        return sorted(
            (entry.name, entry.stat().st_mtime) for entry in os.scandir(folder) if entry.is_dir()
        )
    except FileNotFoundError:
        return []
