"""Which daemon the CLI talks to, and with which token.

Precedence: flags (--url, --token) > environment (CODEQ_URL, CODEQ_TOKEN) >
the profile file > defaults (http://127.0.0.1:8080 and, for a loopback URL or a
unix:///path socket, the dev token a local daemon in dev mode saved in its state
directory).

The profile file (CODEQ_CONFIG, default ~/.codeq/config.yaml) has codeQ's CLI shape:

    currentProfile: dev
    profiles:
      dev:  {url: http://127.0.0.1:8080, token: …}
      prod: {baseUrl: https://codeq.example.com, producerToken: …, workerToken: …,
             adminToken: …}

`baseUrl` is codeQ's name for `url`. A role's own token (producerToken for `task`,
workerToken for `worker`, adminToken for `queue`) comes before `token`; so do
CODEQ_PRODUCER_TOKEN / CODEQ_WORKER_TOKEN / CODEQ_ADMIN_TOKEN before CODEQ_TOKEN.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from codeq import paths
from codeq.client.connections import Target

Role = Literal["producer", "worker", "admin"]
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_PROFILE_FILE = "~/.codeq/config.yaml"


class SettingsError(Exception):
    """The connection settings cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Connection:
    """A daemon's base URL and the bearer token to use (never shown)."""

    url: str
    token: str | None = field(repr=False)
    token_source: str  # where the token came from, for messages (never the token)


def resolve(
    role: Role,
    *,
    url: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Connection:
    """The connection for a command of `role`, from flags, environment, profile file
    and defaults (see the module docstring)."""
    env = os.environ if environ is None else environ
    chosen = _profile(profile or env.get("CODEQ_PROFILE") or None, env)
    role_key = f"{role}Token"
    role_env = f"CODEQ_{role.upper()}_TOKEN"

    final_url = (
        url
        or env.get("CODEQ_URL")
        or env.get("CODEQ_BASE_URL")
        or _text(chosen, "url")
        or _text(chosen, "baseUrl")
        or DEFAULT_URL
    )
    try:
        target = Target.parse(final_url)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None

    candidates: list[tuple[str, str | None]] = [
        ("--token", token),
        (role_env, env.get(role_env)),
        ("CODEQ_TOKEN", env.get("CODEQ_TOKEN")),
        (f"profile {role_key}", _text(chosen, role_key)),
        ("profile token", _text(chosen, "token")),
    ]
    for source, value in candidates:
        if value:
            return Connection(target.url, value, source)
    if target.socket_path or _is_loopback(target.host):
        dev = _dev_token(env)
        if dev:
            return Connection(target.url, dev, "the local dev-token file")
    return Connection(target.url, None, "none")


def profile_file(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("CODEQ_CONFIG") or DEFAULT_PROFILE_FILE).expanduser()


def _profile(name: str | None, env: Mapping[str, str]) -> Mapping[str, Any]:
    """The chosen profile's settings ({} when there is no file and none was named)."""
    path = profile_file(env)
    try:
        text = path.read_text()
    except FileNotFoundError:
        if name:
            raise SettingsError(f"profile {name!r}: no profile file {path}") from None
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read profile file {path}: {exc}") from None
    import yaml  # only when there is a file to read

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"cannot read profile file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise SettingsError(f"{path}: expected a mapping with currentProfile and profiles")
    profiles = doc.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise SettingsError(f"{path}: profiles must be a mapping of name to settings")
    name = name or doc.get("currentProfile") or None
    if name is None:
        return {}
    chosen = profiles.get(name)
    if not isinstance(chosen, dict):
        known = ", ".join(sorted(map(str, profiles))) or "none"
        raise SettingsError(f"{path}: no profile {name!r} (profiles: {known})")
    return chosen


def _text(profile: Mapping[str, Any], key: str) -> str | None:
    value = profile.get(key)
    return str(value) if value not in (None, "") else None


def _dev_token(env: Mapping[str, str]) -> str | None:
    """The dev token a local daemon in dev mode keeps in its state directory (which
    STATE_DIR names, as for `codeq serve`)."""
    state = paths.state_directory(env.get("STATE_DIR") or None, env)
    try:
        return (state / paths.DEV_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
