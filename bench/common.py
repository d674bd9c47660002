"""What the benchmarks share: a `codeq serve` child on its own embedded store, and
request loops that count what they did per second."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """`codeq serve` on its embedded store in its own state directory."""

    def __init__(self, root: Path, name: str, env: dict[str, str], config: dict[str, object]):
        state = root / name
        state.mkdir()
        config_file = root / f"{name}.yaml"
        config_file.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            **env,
            "STATE_DIR": str(state),
            "PORT": str(self.port),
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
        }
        full_env.pop("REDIS_ADDR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codeq", "serve", "--config", str(config_file)],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                async with http.get(self.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("daemon did not become ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


async def create_task(http: aiohttp.ClientSession, daemon: Daemon, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(
        daemon.url + "/v1/codeq/tasks", json={"command": "BENCH"}, headers=headers
    ) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["id"])


async def rate(
    http: aiohttp.ClientSession,
    url: str,
    next_token: Callable[[], str],
    seconds: float,
    concurrency: int,
) -> float:
    """Authenticated GETs of `url` per second, from `concurrency` loops."""
    done = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            headers = {"Authorization": f"Bearer {next_token()}"}
            async with http.get(url, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / (time.monotonic() - started)
