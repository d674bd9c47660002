"""Running under systemd: the notify protocol (READY, WATCHDOG, STOPPING) seen by a
fake manager socket, draining on SIGTERM, reloading on SIGHUP, and the unit file
checked by systemd-analyze. Real `codeq serve` children and real signals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml
from conftest import (
    TOKENS,
    Api,
    ServeProcess,
    StoreProcess,
    free_port,
    listening_hosts,
    server_has_read,
    wait_for,
)

from codeq import systemd
from codeq.config import Config

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "codeq.service"
PRODUCER, WORKER = TOKENS["producer"], TOKENS["worker"]
NEW_PRODUCER_TOKEN = "reloaded-producer-token-acme-01"
TASKS = "/v1/codeq/tasks"


# ------------------------------------------------------------ fixtures


class FakeManager:
    """A service manager's notify socket: an AF_UNIX datagram socket in a short temp dir."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[list[str]] = []  # one list of lines per datagram

    def lines(self) -> list[str]:
        """Every line received so far, in order (reads what is waiting, never blocks)."""
        while True:
            try:
                datagram = self.sock.recv(4096)
            except BlockingIOError:
                break
            self.messages.append(datagram.decode().split("\n"))
        return [line for message in self.messages for line in message]

    def count(self, line: str) -> int:
        return self.lines().count(line)


@pytest.fixture
def manager() -> Iterator[FakeManager]:
    directory = Path(tempfile.mkdtemp(prefix="cq-notify-", dir="/tmp"))  # 107-byte path limit
    fake = FakeManager(directory / "notify.sock")
    yield fake
    fake.sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def write_config(path: Path, log_level: str = "info", tokens: dict[str, Any] | None = None) -> Path:
    """A config file: the log level and static tokens (default: the test identities)."""
    if tokens is None:
        tokens = {token: claims for token, claims in TOKENS.values()}
    path.write_text(yaml.safe_dump({"logLevel": log_level, "staticTokens": tokens}))
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path / "codeq.yaml")


def debug_lines(daemon: ServeProcess) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("level") == "debug"]


async def sighup_and_wait(daemon: ServeProcess, event: str) -> dict[str, Any]:
    """Sends SIGHUP and waits for the next log line named `event`."""
    before = len(daemon.events(event))
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for(lambda: len(daemon.events(event)) > before, timeout=10, message=event)
    record: dict[str, Any] = daemon.events(event)[-1]
    return record


# ------------------------------------------------------------ the notify protocol


async def test_ready_then_watchdog_then_stopping_reach_the_manager(
    manager: FakeManager,
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    store_server: StoreProcess,
    config_file: Path,
) -> None:
    """READY=1 once /readyz answers, WATCHDOG=1 every half interval, STOPPING=1 on SIGTERM."""
    daemon = serve(
        "--config", str(config_file), REDIS_ADDR=store_url,
        NOTIFY_SOCKET=str(manager.path), WATCHDOG_USEC="400000",
    )  # fmt: skip

    def ready() -> bool:
        assert daemon.proc.poll() is None, daemon.log_text()
        return manager.count("READY=1") > 0

    await wait_for(ready, timeout=20, message="READY=1")
    async with http.get(daemon.url + "/readyz") as resp:  # once, right away: no retry
        assert resp.status == 200, await resp.text()
    first = manager.messages[0]
    assert first[0] == "READY=1", manager.messages
    status = f"STATUS=serving on http://127.0.0.1:{daemon.port}, store external "
    server = "KVRocks" if store_server.kind == "kvrocks" else "Redis"
    assert any(re.fullmatch(re.escape(status + server) + r" [\d.]+ \(standalone, RESP2\)", m)
               for m in first), first  # fmt: skip

    await wait_for(lambda: manager.count("WATCHDOG=1") >= 2, timeout=5, message="two pings")
    daemon.proc.send_signal(signal.SIGTERM)
    await wait_for(lambda: manager.count("STOPPING=1"), timeout=10, message="STOPPING=1")
    assert await daemon.exited(timeout=15) == 0, daemon.log_text()

    lines = manager.lines()
    ready_at, stopping_at = lines.index("READY=1"), lines.index("STOPPING=1")
    pings = [i for i, line in enumerate(lines) if line == "WATCHDOG=1"]
    assert ready_at < pings[0], lines
    assert len([i for i in pings if i < stopping_at]) >= 2, lines
    assert lines.count("READY=1") == 1, lines


def test_notify_reaches_an_abstract_socket() -> None:
    """A NOTIFY_SOCKET starting with '@' is in the abstract namespace; lines go in one datagram."""
    name = f"codeq-test-{os.getpid()}-{free_port()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        sender = systemd.NotifySocket("@" + name)
        assert sender.send("READY=1", "STATUS=serving")
        sender.close()
        assert receiver.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_failure_is_logged_once_and_not_raised(tmp_path: Path) -> None:
    """A manager socket that is gone: send returns False, one warning, no exception."""
    sender = systemd.NotifySocket(str(tmp_path / "nobody-listens.sock"))
    with structlog.testing.capture_logs() as logs:
        assert sender.send("WATCHDOG=1") is False
        assert sender.send("WATCHDOG=1") is False
    sender.close()
    assert [entry["log_level"] for entry in logs] == ["warning"], logs


def test_notify_without_a_manager_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NOTIFY_SOCKET: notify sends nothing and says so."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    systemd._manager_socket.cache_clear()
    try:
        assert systemd.notify("READY=1") is False
    finally:
        systemd._manager_socket.cache_clear()


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}, 0.2),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid(
    environ: dict[str, str], interval: float | None
) -> None:
    """WATCHDOG_USEC/2, only when WATCHDOG_PID is unset or ours; None when off or malformed."""
    assert systemd.watchdog_interval(environ) == interval


# ------------------------------------------------------------ SIGTERM


async def _send(port: int, method: str, path: str, token: str, body: bytes) -> Any:
    """Sends one request over a raw connection; returns (reader, writer, client port)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    return reader, writer, writer.get_extra_info("sockname")[1]


async def _dead_letter(api: Api, command: str, count: int) -> None:
    for _ in range(count):
        await api.create(command, maxAttempts=1)
        task = await api.claim("worker", commands=[command])
        path = f"{TASKS}/{task['id']}/nack"
        status, body, _ = await api.call("POST", path, "worker", {"leaseToken": task["leaseToken"]})
        assert status == 200 and body["status"] == "dlq", body


async def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    config_file: Path,
) -> None:
    """SIGTERM: long-polls get 204, a paced redrive its 200; new connections refused; exit 0."""
    daemon = serve(
        "--config", str(config_file), REDIS_ADDR=store_url, SHUTDOWN_GRACE_SECONDS="10"
    )  # fmt: skip
    await daemon.ready(http)
    await _dead_letter(Api(http, daemon.url), "D", 3)
    claim = b'{"commands": ["L"], "waitSeconds": 20}'  # nothing comes: D is not claimed
    redrive = b'{"all": true, "ratePerSecond": 0.5}'  # one task now, the next in 2 s
    sent = [await _send(daemon.port, "POST", f"{TASKS}/claim", WORKER[0], claim) for _ in range(3)]
    sent.append(
        await _send(
            daemon.port, "POST", "/v1/codeq/admin/queues/D/dlq/redrive",
            TOKENS["admin"][0], redrive,
        )
    )  # fmt: skip
    answers = [asyncio.ensure_future(reader.read()) for reader, _, _ in sent]
    try:
        for _, _, client_port in sent:
            await wait_for(lambda p=client_port: server_has_read(daemon.port, p), timeout=5,
                           message="the daemon reading each request")  # fmt: skip
        async with http.get(daemon.url + "/readyz") as resp:  # one more turn of its loop
            assert resp.status == 200
        assert not any(answer.done() for answer in answers)

        daemon.proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: not listening_hosts(daemon.port), timeout=5, message="no listener")
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", daemon.port)
        assert daemon.proc.poll() is None, "the daemon should still be draining"
        raws = await asyncio.wait_for(asyncio.gather(*answers), timeout=10)
    finally:
        for answer in answers:
            answer.cancel()
        for _, writer, _ in sent:
            writer.close()

    for raw in raws[:3]:
        assert raw.startswith(b"HTTP/1.1 204"), raw[:200]
    assert raws[3].startswith(b"HTTP/1.1 200"), raws[3][:300]
    redriven = re.search(rb'"redriven":\s*(\d+)', raws[3])
    assert redriven, raws[3]
    assert 1 <= int(redriven.group(1)) < 3, raws[3]  # stopped between batches: what it did
    assert await daemon.exited(timeout=15) == 0, daemon.log_text()


# ------------------------------------------------------------ SIGHUP


async def test_sighup_reloads_the_log_level(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    config_file: Path,
) -> None:
    """logLevel info -> debug in the file, SIGHUP: debug lines appear and one 'reloaded' line."""
    daemon = serve("--config", str(config_file), REDIS_ADDR=store_url)
    await daemon.ready(http)
    assert debug_lines(daemon) == []

    write_config(config_file, log_level="debug")
    reloaded = await sighup_and_wait(daemon, "reloaded")
    assert reloaded["changed"] == ["logLevel"], reloaded
    assert reloaded["restart_needed"] == [], reloaded
    await wait_for(lambda: debug_lines(daemon), timeout=5, message="a debug line")
    assert daemon.proc.poll() is None and len(daemon.events("codeq ready")) == 1
    for token, _ in TOKENS.values():
        assert token not in daemon.log_text()


class KeepAlive:
    """One HTTP/1.1 connection kept open across requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> KeepAlive:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def create(self, token: str) -> int:
        """POST /tasks on this connection; the status (the server must keep it open)."""
        body = b'{"command": "A", "payload": {}}'
        self.writer.write(
            f"POST {TASKS} HTTP/1.1\r\nHost: codeq\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode().lower()
        length = re.search(r"content-length: (\d+)", head)
        assert length, head
        await self.reader.readexactly(int(length.group(1)))
        assert "connection: close" not in head, head
        return int(head.split()[1])

    def close(self) -> None:
        self.writer.close()


async def test_sighup_swaps_static_tokens_on_an_open_connection(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    config_file: Path,
) -> None:
    """SIGHUP with a new token: it works, the removed one gets 401, on the same open connection."""
    daemon = serve("--config", str(config_file), REDIS_ADDR=store_url)
    await daemon.ready(http)
    connection = await KeepAlive.open(daemon.port)
    try:
        assert await connection.create(PRODUCER[0]) == 202
        assert await connection.create(NEW_PRODUCER_TOKEN) == 401

        tokens = {token: claims for token, claims in TOKENS.values() if token != PRODUCER[0]}
        tokens[NEW_PRODUCER_TOKEN] = PRODUCER[1]
        write_config(config_file, tokens=tokens)
        reloaded = await sighup_and_wait(daemon, "reloaded")

        assert reloaded["changed"] == ["staticTokens"], reloaded
        assert await connection.create(NEW_PRODUCER_TOKEN) == 202
        assert await connection.create(PRODUCER[0]) == 401
    finally:
        connection.close()
    assert daemon.proc.poll() is None and len(daemon.events("codeq ready")) == 1
    assert NEW_PRODUCER_TOKEN not in daemon.log_text()


async def test_bad_config_on_sighup_keeps_the_running_settings(
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    store_url: str,
    config_file: Path,
) -> None:
    """A bad value on SIGHUP: an error naming the key; tokens and log level stay as they were."""
    daemon = serve("--config", str(config_file), REDIS_ADDR=store_url)
    await daemon.ready(http)
    api = Api(http, daemon.url)

    tokens = {NEW_PRODUCER_TOKEN: PRODUCER[1], WORKER[0]: WORKER[1]}
    write_config(config_file, log_level="loud", tokens=tokens)
    failed = await sighup_and_wait(daemon, "reload failed; the running settings are kept")
    assert "'logLevel'" in failed["error"], failed

    await api.create("A")  # the old producer token still works
    headers = {"Authorization": f"Bearer {NEW_PRODUCER_TOKEN}"}
    async with http.post(
        daemon.url + TASKS, json={"command": "A", "payload": {}}, headers=headers
    ) as resp:
        assert resp.status == 401
    assert debug_lines(daemon) == [] and daemon.events("reloaded") == []
    assert daemon.proc.poll() is None


# ------------------------------------------------------------ the unit file


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary replaced by this checkout's `codeq` (which exists)."""
    codeq = Path(sys.executable).parent / "codeq"
    assert codeq.exists(), f"{codeq} is missing: install the checkout (make setup)"
    text = UNIT.read_text()
    assert "ExecStart=/opt/codeq/venv/bin/codeq serve " in text
    unit = tmp_path / "codeq.service"
    unit.write_text(text.replace("ExecStart=/opt/codeq/venv/bin/codeq ", f"ExecStart={codeq} "))
    return unit


def _systemd_analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return binary


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a warning about it."""
    unit = _unit_for_this_machine(tmp_path)
    done = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = done.stdout + done.stderr
    about_unit = [line for line in output.splitlines() if "codeq" in line]
    assert done.returncode == 0 and about_unit == [], output


def test_unit_file_hardening_keeps_exposure_low(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit's sandbox at most 2.0 (OK)."""
    unit = _unit_for_this_machine(tmp_path)
    done = subprocess.run(
        [_systemd_analyze(), "security", "--offline=true", "--threshold=20", "--no-pager",
         str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if "offline" in done.stderr and "unrecognized" in done.stderr:
        pytest.skip("this systemd-analyze has no offline security check (systemd < 250)")
    assert done.returncode == 0, done.stdout + done.stderr


def test_unit_stop_timeout_covers_the_daemon_shutdown() -> None:
    """TimeoutStopSec exceeds the default grace plus the actors' and the store's stop time."""
    match = re.search(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert match, "TimeoutStopSec missing"
    assert int(match.group(1)) > Config().shutdown_grace_seconds + 5 + 10


def test_kvrocks_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts systemd/kvrocks.service (ExecStart pointed at a
    binary that exists here) without a warning about it."""
    text = (UNIT.parent / "kvrocks.service").read_text()
    assert "ExecStart=/usr/local/bin/kvrocks " in text
    unit = tmp_path / "kvrocks.service"
    unit.write_text(text.replace("/usr/local/bin/kvrocks ", f"{sys.executable} "))
    done = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0 and [ln for ln in output.splitlines() if "kvrocks" in ln] == [], (
        output
    )
