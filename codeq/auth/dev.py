"""Dev mode: with no auth configured, one generated token that can do everything."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from codeq.auth.claims import WORKER_SCOPES
from codeq.paths import DEV_TOKEN_FILE as DEV_TOKEN_FILE  # kept here for its importers


def dev_claims(worker_audience: str) -> dict[str, Any]:
    """Producer, wildcard worker and admin at once, in tenant "dev"."""
    return {
        "sub": "dev",
        "tenantId": "dev",
        "aud": [worker_audience],
        "scope": " ".join(sorted(WORKER_SCOPES)),
        "eventTypes": ["*"],
        "role": "ADMIN",
    }


def load_or_create_dev_token(state_dir: Path) -> str:
    """The dev token, generated once and kept (mode 0600) so restarts keep it."""
    path = state_dir / DEV_TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = "cq_dev_" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def dev_banner(addresses: list[str], token: str, path: Path, *, terminal: bool) -> str:
    """What `codeq serve` prints in dev mode. The token itself only on a terminal:
    under systemd stderr is the journal, which many can read; there the banner
    names the file (mode 0600) instead."""
    lines = [f"codeq: dev mode (no auth configured), listening on {', '.join(addresses)}"]
    if terminal:
        lines += [f"codeq: dev token: {token}", f"codeq: (also in {path}, mode 0600)"]
    else:
        lines.append(f"codeq: dev token in {path} (mode 0600; printed on a terminal only)")
    return "\n".join(lines)
