"""Where codeq keeps its files on this host: the state directory and the files in it
that more than one part reads (the daemon writes them; the CLI finds them). Plain
stdlib, so a CLI command can find them without loading the config machinery."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEV_TOKEN_FILE = "dev-token"


def state_directory(state_dir: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """Where the embedded store keeps its data.

    state_dir (the stateDir setting) if set; else $STATE_DIRECTORY (set by
    systemd's StateDirectory=; the first of several ':'-separated paths); else
    $XDG_STATE_HOME/codeq; else ~/.local/state/codeq.
    """
    environ = os.environ if environ is None else environ
    home = Path(environ.get("HOME") or Path.home())
    if state_dir:
        if state_dir == "~" or state_dir.startswith("~/"):
            return home / state_dir[2:]
        return Path(state_dir)
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    xdg = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore relative paths
        return Path(xdg) / "codeq"
    return home / ".local" / "state" / "codeq"
