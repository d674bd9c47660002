"""The `codeq` command."""

from __future__ import annotations

import argparse
import sys

import orjson
import uvloop

from codeq import config as cfg
from codeq.observability import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codeq", description="codeq task-queue daemon")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the daemon (embedded store unless REDIS_ADDR)")
    cfg.add_flags(serve)
    serve.set_defaults(run=_serve)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate and print the effective config")
    cfg.add_flags(check)
    check.set_defaults(run=_config_check)

    args = parser.parse_args(argv)
    try:
        loaded = cfg.load_config(args.config, flags=cfg.flags_from_args(args))
    except cfg.ConfigError as exc:
        print(f"codeq: {exc}", file=sys.stderr)
        return 2
    code: int = args.run(loaded)
    return code


def _config_check(config: cfg.Config) -> int:
    print(orjson.dumps(config.masked(), option=orjson.OPT_INDENT_2).decode())
    return 0


def _serve(config: cfg.Config) -> int:
    configure_logging(config.log_level, config.log_format)
    return uvloop.run(_serve_async(config))


async def _serve_async(config: cfg.Config) -> int:
    from codeq.daemon import Daemon

    daemon = Daemon(config)
    try:
        await daemon.start()
    except Exception:
        await daemon.stop()
        raise
    if daemon.dev_token:
        path = config.state_directory() / "dev-token"
        print(
            f"codeq: dev mode (no auth configured), listening on {', '.join(daemon.addresses)}\n"
            f"codeq: dev token: {daemon.dev_token}\n"
            f"codeq: (also in {path}, mode 0600)",
            file=sys.stderr,
            flush=True,
        )
    return await daemon.run_until_stopped()


if __name__ == "__main__":
    sys.exit(main())
