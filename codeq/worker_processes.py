"""`codeq serve --workers N`: N daemon processes serving one port, under a supervisor.

Each worker is an ordinary `codeq serve` child (same arguments, same config) whose
TCP listener sets SO_REUSEPORT, so the kernel spreads new connections over the N
listening sockets. The supervisor (the process systemd started) holds what must be
single per host and the conversation with systemd:

- the embedded store, started once here; workers connect to its address;
- readiness: each worker gets its own notify socket (a private datagram socket
  here, in place of systemd's), so a worker's READY=1, RELOADING=1, STOPPING=1 and
  WATCHDOG=1 reach the supervisor, which tells systemd READY=1 once every worker is;
- signals: SIGTERM/SIGINT are forwarded, and the supervisor exits 0 once every
  worker drained and exited 0; SIGHUP is forwarded and READY=1 follows the
  workers' own;
- crashes: a worker that exits is restarted with backoff, at most
  RESTART_BUDGET times in RESTART_WINDOW seconds; past that every worker is stopped
  and the supervisor exits 1, so systemd restarts the whole set.

Worker 0 alone listens on the Unix socket and runs the janitor (see worker_config).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog
from prometheus_client import multiprocess

from codeq import systemd
from codeq.actors.base import first_of
from codeq.auth.dev import dev_banner, load_or_create_dev_token
from codeq.config import Config
from codeq.metrics import MULTIPROCESS_DIR_ENV
from codeq.store.embedded import EmbeddedRedis

log = structlog.get_logger("codeq.workers")

# Set by the supervisor in each worker's environment: the worker's number, 0..N-1.
WORKER_INDEX_ENV = "CODEQ_WORKER_INDEX"
# systemd's variables are the supervisor's: a worker reports to the supervisor instead.
_SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
RESTART_BUDGET = 5
RESTART_WINDOW = 60.0
RESTART_BACKOFF = (0.1, 5.0)
# Beyond shutdownGraceSeconds: the workers' actors (5 s) and store close.
_STOP_MARGIN_SECONDS = 10.0
_RELOAD_TIMEOUT_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def worker_index(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's worker number when a supervisor started it, else None."""
    value = (os.environ if environ is None else environ).get(WORKER_INDEX_ENV, "")
    return int(value) if value.isdigit() else None


def worker_config(config: Config, index: int) -> Config:
    """The config worker `index` runs with: only one process can listen on a Unix
    socket path, and one janitor per host is enough (its passes are atomic and
    idempotent, N of them would only repeat the work)."""
    if index == 0:
        return config
    return replace(config, unix_socket_path=None, janitor_interval_seconds=0.0)


@dataclass(slots=True)
class _Worker:
    """One worker slot: its notify socket and its current process."""

    index: int
    notify: socket.socket
    notify_path: Path
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    readies: int = 0  # READY=1 messages received, over every process of this slot
    last_ping: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class WorkerProcesses:
    """Runs `config.workers` daemon processes with the command line `argv` (the
    arguments of `codeq` after the program name) and supervises them."""

    def __init__(self, config: Config, argv: list[str]) -> None:
        self.config = config
        self.argv = argv
        self.embedded: EmbeddedRedis | None = None
        self.workers: list[_Worker] = []
        self._stop = asyncio.Event()
        self._signal = signal.SIGTERM  # forwarded to the workers at stop
        self._hup = asyncio.Event()
        self._failed = asyncio.Event()  # a worker past the restart budget
        self._changed = asyncio.Event()  # a worker reported or exited
        self._started = False  # every worker was ready once
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._budget: deque[float] = deque()
        self._dir: Path | None = None

    # ------------------------------------------------------------ run

    async def run(self) -> int:
        """Starts the workers, serves until a signal or a failure; the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._hup.set)
        self._dir = Path(tempfile.mkdtemp(prefix="codeq-workers-"))  # mode 0700
        code = 1
        try:
            env = await self._worker_env()
            for index in range(self.config.workers):
                self.workers.append(self._slot(index))
            for worker in self.workers:
                await self._spawn(worker, env)
                self._tasks.append(asyncio.create_task(self._keep_running(worker, env)))
                self._tasks.append(asyncio.create_task(self._read_reports(worker)))
            if await self._until_all_ready():
                self._announce_ready()
                code = await self._serve()
            elif self._stop.is_set():
                code = 0  # asked to stop while starting
        finally:
            code = await self._stop_all(code)
        return code

    def _request_stop(self, sig: signal.Signals) -> None:
        self._signal = sig
        self._stop.set()

    async def _worker_env(self) -> dict[str, str]:
        """The workers' environment: ours minus systemd's, plus the embedded store's
        address when this supervisor runs it."""
        env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_ENV}
        assert self._dir is not None
        metrics_dir = self._dir / "metrics"
        metrics_dir.mkdir()
        env[MULTIPROCESS_DIR_ENV] = str(metrics_dir)  # one /metrics for the whole set
        config = self.config
        if config.dev_mode:  # made once here, so every worker loads the same token
            await asyncio.to_thread(load_or_create_dev_token, config.state_directory())
        if not config.redis_addr:
            self.embedded = EmbeddedRedis(
                config.state_directory(),
                password=config.redis_password,
                binary=config.redis_server_path,
            )
            address = await self.embedded.start()
            env["REDIS_ADDR"] = address.url
            if address.password is not None:
                env["REDIS_PASSWORD"] = address.password
        interval = systemd.watchdog_interval()
        if interval is not None:  # workers ping us; we ping systemd for all
            env["WATCHDOG_USEC"] = str(int(interval * 2_000_000))
        return env

    def _slot(self, index: int) -> _Worker:
        assert self._dir is not None
        path = self._dir / f"worker-{index}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(str(path))
        sock.setblocking(False)
        return _Worker(index, sock, path)

    async def _spawn(self, worker: _Worker, env: dict[str, str]) -> None:
        worker.ready = False
        worker.last_ping = time.monotonic()
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "codeq",
            *self.argv,
            env={
                **env,
                WORKER_INDEX_ENV: str(worker.index),
                "NOTIFY_SOCKET": str(worker.notify_path),
            },
            stdin=asyncio.subprocess.DEVNULL,
            # Signals come from us only (a terminal's Ctrl-C too): one ordered stop.
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),
        )
        log.info("worker_started", worker=worker.index, pid=worker.pid)

    async def _until_all_ready(self) -> bool:
        """Waits until every worker said READY=1; False on a stop, or if one exited."""
        while not all(worker.ready for worker in self.workers):
            if self._stop.is_set() or self._failed.is_set():
                return False
            self._changed.clear()
            await first_of([self._changed, self._stop, self._failed])
        self._started = True
        return True

    def _announce_ready(self) -> None:
        config = self.config
        log.info(
            "codeq ready",
            listening=self.addresses(),
            workers=[worker.pid for worker in self.workers],
            store="embedded" if self.embedded else "external",
            dev_mode=config.dev_mode,
        )
        systemd.notify("READY=1", f"STATUS={self._status()}")
        if config.dev_mode:
            path = config.state_directory() / "dev-token"
            token = path.read_text().strip()
            text = dev_banner(self.addresses(), token, path, terminal=sys.stderr.isatty())
            print(text, file=sys.stderr, flush=True)

    def addresses(self) -> list[str]:
        config = self.config
        found = [f"http://{config.bind_address}:{config.port}"] if config.tcp_enabled else []
        if config.unix_socket_path:
            found.append(f"unix://{config.unix_socket_path}")
        return found

    def _status(self) -> str:
        store = "embedded" if self.embedded else "external"
        return (
            f"serving on {', '.join(self.addresses())}, {len(self.workers)} workers, store {store}"
        )

    async def _serve(self) -> int:
        """Until a stop signal (0) or a failure (1); SIGHUP is passed on."""
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            self._tasks.append(asyncio.create_task(self._ping_watchdog(watchdog)))
        fatal = [self._failed] + ([self.embedded.failed] if self.embedded else [])
        while not self._stop.is_set():
            if any(event.is_set() for event in fatal):
                log.error("workers failed past their restart budget; exiting for a restart")
                systemd.notify("STATUS=workers failed past their restart budget; exiting")
                return 1
            if self._hup.is_set():
                self._hup.clear()
                await self._reload()
                continue
            await first_of([self._stop, self._hup, *fatal])
        return 0

    # ------------------------------------------------------------ the workers

    async def _keep_running(self, worker: _Worker, env: dict[str, str]) -> None:
        """Restarts the worker whenever it exits, within the restart budget."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            worker.ready = False
            self._changed.set()
            if self._dir is not None and worker.pid is not None:
                # its live gauges go; its counters stay in the sums, so they never drop
                multiprocess.mark_process_dead(worker.pid, str(self._dir / "metrics"))  # type: ignore[no-untyped-call]
            if self._stopping:
                return
            log.warning("worker_exited", worker=worker.index, pid=worker.pid, exit_code=code)
            if not self._started:  # a worker that cannot start will not start next time
                log.error("worker_failed_to_start", worker=worker.index, exit_code=code)
                self._failed.set()
                return
            delay = self._take_restart()
            if delay is None:
                log.error("worker_restart_budget_exhausted", budget=RESTART_BUDGET)
                self._failed.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            await self._spawn(worker, env)

    def _take_restart(self) -> float | None:
        """Spends one restart of the set's budget: the delay before it, or None."""
        now = time.monotonic()
        while self._budget and now - self._budget[0] > RESTART_WINDOW:
            self._budget.popleft()
        if len(self._budget) >= RESTART_BUDGET:
            return None
        delay = min(RESTART_BACKOFF[0] * 2.0 ** len(self._budget), RESTART_BACKOFF[1])
        self._budget.append(now)
        return delay

    async def _read_reports(self, worker: _Worker) -> None:
        """Reads the worker's sd_notify messages: readiness and watchdog pings."""
        loop = asyncio.get_running_loop()
        while True:
            message = (await loop.sock_recv(worker.notify, 4096)).decode(errors="replace")
            lines = set(message.splitlines())
            if "READY=1" in lines:
                worker.ready = True
                worker.readies += 1
                log.info("worker_ready", worker=worker.index, pid=worker.pid)
            if lines & {"RELOADING=1", "STOPPING=1"}:
                worker.ready = False
            if "WATCHDOG=1" in lines:
                worker.last_ping = time.monotonic()
            self._changed.set()

    async def _ping_watchdog(self, interval: float) -> None:
        """WATCHDOG=1 to systemd from this loop; a ready worker that stopped pinging us
        for a whole watchdog interval is killed (and restarted)."""
        while True:
            now = time.monotonic()
            for worker in self.workers:
                if worker.ready and worker.running() and now - worker.last_ping > 2 * interval:
                    log.error("worker_watchdog_timeout", worker=worker.index, pid=worker.pid)
                    assert worker.proc is not None
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.kill()
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _reload(self) -> None:
        """SIGHUP: every worker reloads; READY=1 again once each has said so."""
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        before = {worker.index: worker.readies for worker in self.workers}
        self._signal_all(signal.SIGHUP)
        deadline = time.monotonic() + _RELOAD_TIMEOUT_SECONDS
        while not all(w.readies > before[w.index] for w in self.workers if w.running()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                log.warning("workers did not all report their reload", waited=remaining <= 0)
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_of([self._changed, self._stop]), remaining)
        log.info("reloaded workers", workers=[worker.pid for worker in self.workers])
        systemd.notify("READY=1", f"STATUS={self._status()}")

    def _signal_all(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.running():
                assert worker.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    # ------------------------------------------------------------ stop

    async def _stop_all(self, code: int) -> int:
        """Stops every worker (SIGTERM, SIGKILL past the grace), then the embedded
        store; the exit code: 0 only if `code` is and every worker exited 0."""
        self._stopping = True
        grace = self.config.shutdown_grace_seconds
        systemd.notify("STOPPING=1", f"STATUS=draining the workers (up to {grace:g} s)")
        log.info("stopping workers", grace_seconds=grace)
        running = [worker for worker in self.workers if worker.running()]
        self._signal_all(self._signal)
        procs = [worker.proc for worker in running if worker.proc is not None]
        waits = [asyncio.ensure_future(proc.wait()) for proc in procs]
        if waits:
            await asyncio.wait(waits, timeout=grace + _STOP_MARGIN_SECONDS)
        for worker in self.workers:
            if worker.running():
                assert worker.proc is not None
                log.error("worker did not stop in time; killing it", worker=worker.index)
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
        codes = [await proc.wait() for proc in procs]
        for worker, exit_code in zip(running, codes, strict=True):
            log.info("worker_stopped", worker=worker.index, pid=worker.pid, exit_code=exit_code)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            worker.notify.close()
        if self.embedded is not None:
            await self.embedded.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        if code == 0 and any(codes):
            code = 1
        log.info("stopped", exit_code=code)
        return code


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook that has a worker get SIGTERM (and drain) if the supervisor dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the supervisor died before prctl ran
            os._exit(1)

    return hook
