"""The HTTP transport on a Unix socket (unixSocketPath): the lifecycle over it, its
permissions, a stale socket replaced, a live one or a non-socket refused, removal at
shutdown; and how unixSocketMode is read."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import TOKENS, ServeProcess, make_config, serve_command, subprocess_env

from codeq.config import ConfigError, load_config
from codeq.daemon import Daemon
from codeq.unix_socket import ListenError

TASKS = "http://codeq/v1/codeq/tasks"


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path short enough for sun_path (107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="cq-sock-", dir="/tmp"))
    yield directory / "api.sock"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def daemons(store_url: str) -> AsyncIterator[Callable[..., Awaitable[Daemon]]]:
    """Starts in-process daemons with config overrides; a failed start is cleaned up too."""
    started: list[Daemon] = []

    async def start(**overrides: Any) -> Daemon:
        daemon = Daemon(make_config(store_url, **overrides))
        started.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in reversed(started):
        await daemon.stop()


def unix_session(path: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(path)),
        timeout=aiohttp.ClientTimeout(total=10),
    )


def auth(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[who][0]}"}


def exists(path: Path) -> bool:
    return os.path.lexists(path)


def write_file(path: Path, text: str) -> None:
    path.write_text(text)


def stale_socket(path: Path) -> None:
    """Leaves a socket file nobody listens on, as a daemon killed with -9 does."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


async def test_lifecycle_over_the_unix_socket(
    daemons: Callable[..., Awaitable[Daemon]], socket_path: Path
) -> None:
    """create → claim → result over the Unix socket; the address list names unix:///path."""
    daemon = await daemons(unix_socket_path=str(socket_path))
    assert daemon.addresses[0].startswith("http://127.0.0.1:")
    assert daemon.addresses[1] == f"unix://{socket_path}"
    async with unix_session(socket_path) as http:
        body = {"command": "A", "payload": {"n": 1}}
        async with http.post(TASKS, json=body, headers=auth("producer")) as resp:
            assert resp.status == 202
            created = await resp.json()
        claim = {"commands": ["A"], "waitSeconds": 1}
        async with http.post(f"{TASKS}/claim", json=claim, headers=auth("worker")) as resp:
            assert resp.status == 200
            task = await resp.json()
        assert task["id"] == created["id"]
        result = {"status": "COMPLETED", "result": {"ok": True}, "leaseToken": task["leaseToken"]}
        url = f"{TASKS}/{task['id']}/result"
        async with http.post(url, json=result, headers=auth("worker")) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{TASKS}/{task['id']}", headers=auth("producer")) as resp:
            assert (await resp.json())["status"] == "COMPLETED"


async def test_tcp_can_be_turned_off(
    daemons: Callable[..., Awaitable[Daemon]], socket_path: Path
) -> None:
    """tcpEnabled false: the daemon listens on the Unix socket only."""
    daemon = await daemons(unix_socket_path=str(socket_path), tcp_enabled=False)
    assert daemon.addresses == [f"unix://{socket_path}"]
    async with unix_session(socket_path) as http, http.get("http://codeq/readyz") as resp:
        assert resp.status == 200


async def test_socket_mode_and_group_as_configured_and_removed_at_sigterm(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    tokens_file: Path,
    socket_path: Path,
) -> None:
    """UNIX_SOCKET_MODE=0640 and UNIX_SOCKET_GROUP: the socket has them; SIGTERM removes it."""
    group = grp.getgrgid(os.getgid()).gr_name
    daemon = serve(
        "--config", str(tokens_file), REDIS_ADDR=store_url,
        UNIX_SOCKET_PATH=str(socket_path), UNIX_SOCKET_MODE="0640", UNIX_SOCKET_GROUP=group,
    )  # fmt: skip
    await daemon.ready(http)
    st = os.lstat(socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == os.getgid()
    daemon.proc.send_signal(signal.SIGTERM)
    assert await daemon.exited(timeout=15) == 0, daemon.log_text()
    assert not exists(socket_path)


async def test_stale_socket_is_replaced(
    daemons: Callable[..., Awaitable[Daemon]], socket_path: Path
) -> None:
    """A socket file nobody listens on (a dead daemon's) is replaced at start."""
    stale_socket(socket_path)
    await daemons(unix_socket_path=str(socket_path))
    async with unix_session(socket_path) as http, http.get("http://codeq/readyz") as resp:
        assert resp.status == 200


def test_live_socket_is_refused(tmp_path: Path, socket_path: Path, store_url: str) -> None:
    """Another process listening on the path: exit 1 naming unixSocketPath; its socket stays."""
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(socket_path))
    other.listen()
    try:
        inode = socket_path.lstat().st_ino
        done = subprocess.run(
            serve_command(),
            env=subprocess_env(
                REDIS_ADDR=store_url, PORT="0", STATE_DIR=str(tmp_path),
                UNIX_SOCKET_PATH=str(socket_path),
            ),
            cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert "config key 'unixSocketPath': another process is listening" in done.stderr
        assert socket_path.lstat().st_ino == inode
    finally:
        other.close()


async def test_non_socket_path_is_refused(
    daemons: Callable[..., Awaitable[Daemon]], socket_path: Path
) -> None:
    """A regular file at the path: the start is refused and the file is left alone."""
    write_file(socket_path, "not a socket")
    with pytest.raises(ListenError, match=r"'unixSocketPath': .* is not a socket"):
        await daemons(unix_socket_path=str(socket_path))
    assert stat.S_ISREG(os.lstat(socket_path).st_mode)


@pytest.mark.parametrize(
    ("raw", "mode"), [("0660", 0o660), ("660", 0o660), ("0o600", 0o600), ("0", 0)]
)
def test_socket_mode_is_read_as_octal_text(raw: str, mode: int) -> None:
    """UNIX_SOCKET_MODE is octal text, with or without a leading 0 or 0o."""
    assert load_config(environ={"UNIX_SOCKET_MODE": raw}).unix_socket_mode == mode


def test_socket_mode_from_yaml_is_an_octal_integer(tmp_path: Path) -> None:
    """unixSocketMode: 0660 in YAML (an octal integer) and '0660' (text) mean the same."""
    for text in ("unixSocketMode: 0660\n", "unixSocketMode: '0660'\n"):
        path = tmp_path / "mode.yaml"
        path.write_text(text)
        assert load_config(path, environ={}).unix_socket_mode == 0o660


@pytest.mark.parametrize("raw", ["0999", "1777", "rw-rw----", "", "-1"])
def test_bad_socket_mode_names_the_key(raw: str) -> None:
    """A mode that is not octal permission bits stops the start, naming the key."""
    with pytest.raises(ConfigError, match="'unixSocketMode'"):
        load_config(environ={"UNIX_SOCKET_MODE": raw})


def test_socket_path_must_be_absolute_and_short() -> None:
    """A relative or over-long socket path is refused, naming the key."""
    for raw in ("api.sock", "/" + "x" * 120):
        with pytest.raises(ConfigError, match="'unixSocketPath'"):
            load_config(environ={"UNIX_SOCKET_PATH": raw})
