"""`codeq serve --workers N`, with real processes and signals: the workers share the
port, the embedded store runs once, READY=1 waits for every worker, SIGTERM drains
them all, a killed worker is replaced."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from conftest import (
    TOKENS,
    ServeProcess,
    children_of,
    free_port,
    serve_command,
    subprocess_env,
    wait_for,
)
from test_processes import TASKS

from codeq.config import ConfigError, load_config

TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"


# ------------------------------------------------------------ /proc


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def alive(pid: int) -> bool:
    """True while the pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def workers_of(parent: ServeProcess) -> set[int]:
    """The supervisor's worker processes (its children other than redis-server)."""
    return {pid for pid in children_of(parent.pid) if process_name(pid) != "redis-server"}


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets a process holds open."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def tcp_inodes(port: int, state: str, remote_ports: set[int] | None = None) -> set[int]:
    """Inodes of the TCP sockets on local `port` in `state` (to these remote ports)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        wanted = remote_ports is None or remote_port in remote_ports
        if local_port == port and fields[3] == state and wanted:
            found.add(int(fields[9]))
    return found


def listeners_on(port: int, pids: set[int]) -> set[int]:
    """Which of the pids hold a listening socket on the port."""
    listening = tcp_inodes(port, TCP_LISTEN)
    return {pid for pid in pids if socket_inodes(pid) & listening}


async def serving_pids(port: int, pids: set[int], connections: int = 24) -> set[int]:
    """Opens connections, gets one answer on each, and tells which pids accepted them."""
    opened = []
    try:
        for _ in range(connections):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: codeq\r\n\r\n")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            opened.append(writer)
        client_ports = {writer.get_extra_info("sockname")[1] for writer in opened}
        accepted = tcp_inodes(port, TCP_ESTABLISHED, client_ports)
        assert len(accepted) == connections
        return {pid for pid in pids if socket_inodes(pid) & accepted}
    finally:
        for writer in opened:
            writer.close()


# ------------------------------------------------------------ a systemd notify socket


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


async def next_message(sock: socket.socket, timeout: float = 20.0) -> set[str]:
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), timeout)
    return set(data.decode().splitlines())


# ------------------------------------------------------------ tests


async def test_workers_share_the_port_and_one_embedded_store(
    state_dir: Path,
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
) -> None:
    """--workers 2: two worker pids listen on the port and both answer; one redis-server."""
    parent = serve("--workers", "2", STATE_DIR=str(state_dir))
    await parent.ready(http)
    await wait_for(lambda: len(parent.events("worker_ready")) == 2, message="both workers")
    workers = workers_of(parent)
    assert len(workers) == 2, parent.log_text()
    assert listeners_on(parent.port, workers) == workers
    assert await serving_pids(parent.port, workers) == workers

    stores = [pid for pid in children_of(parent.pid) if process_name(pid) == "redis-server"]
    assert len(stores) == 1
    assert not any(children_of(pid) for pid in workers)  # no worker runs a store of its own

    token = (state_dir / "dev-token").read_text().strip()
    # the banner once, naming the file: stderr is not a terminal, so no token in it
    assert parent.log_text().count(f"dev token in {state_dir / 'dev-token'}") == 1
    assert token not in parent.log_text()
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(4):  # new connections: spread over both workers, one dev token for all
        async with aiohttp.ClientSession(headers=headers) as fresh:
            async with fresh.post(parent.url + TASKS, json={"command": "A", "payload": {}}) as resp:
                assert resp.status == 202
                created = await resp.json()
            async with fresh.post(parent.url + TASKS + "/claim", json={}) as resp:
                assert resp.status == 200
                assert (await resp.json())["id"] == created["id"]


async def test_ready_only_when_every_worker_is(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    tokens_file: Path,
    notify_socket: socket.socket,
) -> None:
    """NOTIFY_SOCKET: one READY=1, from the supervisor, after both workers; STOPPING=1 at stop."""
    parent = serve(
        "--config", str(tokens_file), "--workers", "2",
        REDIS_ADDR=store_url, NOTIFY_SOCKET=notify_socket.getsockname(),
    )  # fmt: skip
    message = await next_message(notify_socket)
    assert "READY=1" in message, message
    assert len(parent.events("worker_ready")) == 2, parent.log_text()
    assert any(line.startswith("STATUS=serving on http://") for line in message)
    await parent.ready(http)
    parent.proc.send_signal(signal.SIGTERM)
    assert "STOPPING=1" in await next_message(notify_socket)
    assert await parent.exited(timeout=20) == 0, parent.log_text()
    with pytest.raises(BlockingIOError):  # nothing else: the workers never wrote here
        notify_socket.recv(4096)


async def test_sigterm_drains_every_worker_and_exits_zero(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    tokens_file: Path,
) -> None:
    """SIGTERM to the supervisor: every worker exits 0, then it does; nothing is left."""
    parent = serve("--config", str(tokens_file), "--workers", "2", REDIS_ADDR=store_url)
    await parent.ready(http)
    await wait_for(lambda: len(parent.events("worker_ready")) == 2, message="both workers")
    workers = workers_of(parent)
    assert len(workers) == 2
    parent.proc.send_signal(signal.SIGTERM)
    assert await parent.exited(timeout=20) == 0, parent.log_text()
    stopped = parent.events("worker_stopped")
    assert {record["pid"] for record in stopped} == workers
    assert {record["exit_code"] for record in stopped} == {0}
    assert not any(alive(pid) for pid in workers)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", parent.port)


async def test_a_killed_worker_is_replaced(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    tokens_file: Path,
) -> None:
    """SIGKILL of a worker: the supervisor starts another, which serves the port too."""
    parent = serve("--config", str(tokens_file), "--workers", "2", REDIS_ADDR=store_url)
    await parent.ready(http)
    await wait_for(lambda: len(parent.events("worker_ready")) == 2, message="both workers")
    victim, survivor = sorted(workers_of(parent))
    os.kill(victim, signal.SIGKILL)

    def replaced() -> set[int]:
        ready = {record["pid"] for record in parent.events("worker_ready")}
        new = workers_of(parent) - {victim, survivor}
        return new if new and new <= ready else set()

    (new,) = await wait_for(replaced, timeout=20, message="a new ready worker")
    assert parent.proc.poll() is None
    assert not alive(victim)
    exited = parent.events("worker_exited")
    assert [(r["pid"], r["exit_code"]) for r in exited] == [(victim, -signal.SIGKILL)]
    assert listeners_on(parent.port, {survivor, new}) == {survivor, new}
    assert await serving_pids(parent.port, {survivor, new}) == {survivor, new}
    headers = {"Authorization": f"Bearer {TOKENS['producer'][0]}"}
    async with http.post(
        parent.url + TASKS, json={"command": "A", "payload": {}}, headers=headers
    ) as resp:
        assert resp.status == 202


async def test_metrics_count_the_whole_set_of_workers(
    serve: Callable[..., ServeProcess],
    store_url: str,
    tokens_file: Path,
) -> None:
    """Whichever worker answers /metrics, its counters sum every worker's (and a
    killed worker's counts stay in the sums)."""
    parent = serve("--config", str(tokens_file), "--workers", "2", REDIS_ADDR=store_url)
    async with aiohttp.ClientSession() as http:
        await parent.ready(http)
    await wait_for(lambda: len(parent.events("worker_ready")) == 2, message="both workers")
    workers = workers_of(parent)
    headers = {"Authorization": f"Bearer {TOKENS['producer'][0]}"}

    async def create_on_fresh_connections(count: int) -> None:
        for _ in range(count):  # a connection each: the kernel spreads them over workers
            async with (
                aiohttp.ClientSession(headers=headers) as fresh,
                fresh.post(parent.url + TASKS, json={"command": "MW", "payload": {}}) as resp,
            ):
                assert resp.status == 202

    async def created_counts(scrapes: int) -> set[float]:
        seen = set()
        for _ in range(scrapes):
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.get(parent.url + "/metrics") as resp,
            ):
                text = await resp.text()
            line = next(x for x in text.splitlines() if x.startswith(SAMPLE))
            seen.add(float(line.split()[-1]))
        return seen

    await create_on_fresh_connections(20)
    assert await serving_pids(parent.port, workers) == workers  # both really serve
    assert await created_counts(10) == {20.0}
    os.kill(min(workers), signal.SIGKILL)
    await wait_for(
        lambda: len(parent.events("worker_ready")) == 3, timeout=20, message="a new worker"
    )
    await create_on_fresh_connections(5)
    assert await created_counts(10) == {25.0}


SAMPLE = 'codeq_task_created_total{command="MW"}'


def test_workers_need_a_fixed_port() -> None:
    """workers > 1 with port 0 is refused, naming workers."""
    with pytest.raises(ConfigError, match="'workers'"):
        load_config(environ={"WORKERS": "2", "PORT": "0"})


async def test_a_worker_stuck_past_the_watchdog_is_replaced(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    tokens_file: Path,
    notify_socket: socket.socket,
) -> None:
    """WATCHDOG_USEC: a worker that stops pinging (SIGSTOP) is killed and replaced."""
    parent = serve(
        "--config", str(tokens_file), "--workers", "2", REDIS_ADDR=store_url,
        NOTIFY_SOCKET=notify_socket.getsockname(), WATCHDOG_USEC="2000000",
    )  # fmt: skip
    assert "READY=1" in await next_message(notify_socket)
    victim = min(workers_of(parent))
    os.kill(victim, signal.SIGSTOP)
    await wait_for(lambda: parent.events("worker_watchdog_timeout"), timeout=10,
                   message="the watchdog timeout")  # fmt: skip
    assert parent.events("worker_watchdog_timeout")[0]["pid"] == victim
    await wait_for(lambda: len(parent.events("worker_ready")) >= 3, timeout=20,
                   message="the replacement ready")  # fmt: skip
    assert not alive(victim)
    await parent.ready(http)


def test_a_worker_that_cannot_start_fails_the_start(
    tmp_path: Path,
    store_url: str,
    tokens_file: Path,
) -> None:
    """A worker refused at start (its Unix socket is in use): the supervisor exits 1."""
    path = Path(tempfile.mkdtemp(prefix="cq-", dir="/tmp")) / "api.sock"
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    other.listen()
    try:
        done = subprocess.run(
            serve_command("--config", str(tokens_file), "--workers", "2"),
            env=subprocess_env(
                REDIS_ADDR=store_url, PORT=str(free_port()), UNIX_SOCKET_PATH=str(path),
                LOG_FORMAT="json",
            ),
            cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        other.close()
        shutil.rmtree(path.parent)
    assert done.returncode == 1, done.stderr
    assert "config key 'unixSocketPath': another process is listening" in done.stderr
    assert "worker_failed_to_start" in done.stderr
