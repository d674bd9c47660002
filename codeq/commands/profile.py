"""`codeq init` and `codeq auth set|show|clear`: the CLI's profile file, as codeQ's CLI
keeps it (~/.codeq/config.yaml, or $CODEQ_CONFIG; see codeq.commands.connection).

Tokens are secrets: the file is written with mode 0600 (its folder 0700), replaced
atomically, and `auth show` prints only a token's first characters and length.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from codeq.commands.base import Subcommands
from codeq.commands.connection import DEFAULT_URL, SettingsError, profile_file
from codeq.commands.output import note

DEFAULT_PROFILE = "default"
ROLES = ("producer", "worker", "admin")
HEADER = """\
# codeq CLI profiles (codeQ's CLI shape), written by `codeq init` / `codeq auth set`.
# Each profile: baseUrl, and producerToken / workerToken / adminToken (or token,
# for every role). Pick one with --profile NAME or CODEQ_PROFILE; flags and
# CODEQ_URL / CODEQ_*_TOKEN beat this file. Tokens are secrets: keep it mode 0600.
"""


def add(commands: Subcommands) -> None:
    init = commands.add_parser(
        "init",
        help="write the CLI's profile file (~/.codeq/config.yaml, mode 0600)",
        description="Write the CLI's profile file: a profile with the daemon's URL and "
        "tokens (codeQ's `codeq init`).",
        epilog="example:\n  codeq init --base-url http://127.0.0.1:8080 --producer-token - < token",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--base-url", "--url", dest="url", metavar="URL", help=f"(default {DEFAULT_URL})"
    )
    init.add_argument("--profile", help=f"profile name (default {DEFAULT_PROFILE!r})")
    _token_flags(init, "{role}-token")
    init.add_argument(
        "--admin", action="store_true", help="use the producer token for admin commands too"
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.add_argument("--no-prompt", action="store_true", help="accepted; codeq never prompts")
    init.set_defaults(local=_init)

    auth = commands.add_parser(
        "auth", help="store, show or clear the CLI's tokens in its profile file"
    ).add_subparsers(dest="auth_command", required=True, metavar="COMMAND")
    set_ = auth.add_parser("set", help="store tokens in the current profile (`-` reads stdin)")
    _token_flags(set_, "{role}", "{role}-token")
    set_.add_argument("--token", help="one token for every role")
    set_.add_argument("--profile", help="profile (default: the current one, else 'default')")
    set_.set_defaults(local=_auth_set)
    show = auth.add_parser("show", help="show the current profile, tokens masked")
    show.add_argument("--profile")
    show.set_defaults(local=_auth_show)
    clear = auth.add_parser("clear", help="remove tokens from the current profile")
    for role in ROLES:
        clear.add_argument(f"--{role}", action="store_true", help=f"only the {role} token")
    clear.add_argument("--all", action="store_true", help="every token (the default)")
    clear.add_argument("--profile")
    clear.set_defaults(local=_auth_clear)


def _token_flags(parser: argparse.ArgumentParser, *spellings: str) -> None:
    for role in ROLES:
        names = [f"--{s.format(role=role)}" for s in spellings]
        parser.add_argument(*names, dest=f"{role}_token", metavar="TOKEN", help=f"{role} token")


def run(args: argparse.Namespace) -> int:
    """Runs `init` or `auth …`: 0, or 2 with one line on stderr."""
    try:
        code: int = args.local(args, profile_file(os.environ))
    except SettingsError as exc:
        note(str(exc))
        return 2
    return code


# ------------------------------------------------------------ the commands


def _init(args: argparse.Namespace, path: Path) -> int:
    if path.exists() and not args.force:
        raise SettingsError(f"{path} exists: use --force, or `codeq auth set` to change tokens")
    args.url, args.profile = args.url or DEFAULT_URL, args.profile or DEFAULT_PROFILE
    profile: dict[str, Any] = {"baseUrl": args.url}
    profile |= _given_tokens(args)
    if args.admin and "producerToken" in profile:
        profile.setdefault("adminToken", profile["producerToken"])
    _write(path, {"currentProfile": args.profile, "profiles": {args.profile: profile}})
    note(f"wrote {path} (profile {args.profile!r}, {args.url})")
    return 0


def _auth_set(args: argparse.Namespace, path: Path) -> int:
    tokens = _given_tokens(args)
    if args.token:
        tokens["token"] = _value(args.token)
    if not tokens:
        raise SettingsError("auth set: give --producer, --worker, --admin or --token")
    doc = _read(path)
    name = args.profile or doc.get("currentProfile") or DEFAULT_PROFILE
    doc.setdefault("currentProfile", name)
    profiles = doc.setdefault("profiles", {})
    profiles.setdefault(name, {"baseUrl": DEFAULT_URL}).update(tokens)
    _write(path, doc)
    note(f"stored {', '.join(sorted(tokens))} in profile {name!r} of {path}")
    return 0


def _auth_show(args: argparse.Namespace, path: Path) -> int:
    doc = _read(path)
    name, profile = _chosen(doc, args.profile, path)
    print(f"profile: {name} ({path})")
    for key, value in profile.items():
        shown = _mask(str(value)) if key.lower().endswith("token") else value
        print(f"{key}: {shown}")
    return 0


def _auth_clear(args: argparse.Namespace, path: Path) -> int:
    doc = _read(path)
    name, profile = _chosen(doc, args.profile, path)
    chosen = [role for role in ROLES if getattr(args, role)]
    keys = [f"{role}Token" for role in chosen] if chosen and not args.all else None
    removed = [
        k for k in list(profile) if (k in keys if keys else k.endswith("Token") or k == "token")
    ]
    for key in removed:
        del profile[key]
    _write(path, doc)
    note(f"removed {', '.join(removed) or 'nothing'} from profile {name!r}")
    return 0


# ------------------------------------------------------------ the file


def _given_tokens(args: argparse.Namespace) -> dict[str, str]:
    return {
        f"{role}Token": _value(getattr(args, f"{role}_token"))
        for role in ROLES
        if getattr(args, f"{role}_token")
    }


def _value(token: str) -> str:
    """A token from the command line, or from stdin for `-` (kept out of `ps` and
    the shell's history)."""
    value = sys.stdin.readline().strip() if token == "-" else token.strip()
    if not value:
        raise SettingsError("empty token")
    return value


def _mask(token: str) -> str:
    """The first 4 characters of a token of 12 or more, and its length; never more."""
    shown = token[:4] if len(token) >= 12 else ""
    return f"{shown}… ({len(token)} characters)"


def _read(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("profiles", {}), dict):
        raise SettingsError(f"{path}: expected a mapping with currentProfile and profiles")
    return doc


def _chosen(doc: dict[str, Any], name: str | None, path: Path) -> tuple[str, dict[str, Any]]:
    name = name or doc.get("currentProfile") or DEFAULT_PROFILE
    profile = doc.get("profiles", {}).get(name)
    if not isinstance(profile, dict):
        raise SettingsError(f"{path}: no profile {name!r} (run `codeq init`)")
    return name, profile


def _write(path: Path, doc: dict[str, Any]) -> None:
    """Replaces the file atomically, mode 0600 in a 0700 folder."""
    import yaml

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".codeq-", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(HEADER + yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
