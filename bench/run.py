"""The benchmark: codeq beside its peers, on one store, in one run, as ratios.

    .venv/bin/python bench/run.py [--only MODE ...] [--n 10000] [--rounds 3]

Starts ONE redis-server configured as codeq's embedded store (AOF, appendfsync
everysec) and measures on it, in turn, R rounds each (median):

- the store's ceiling: EVALSHA of a trivial script from one asyncio redis-py client,
  unpipelined and pipelined (100 per round trip), in ops/s;
- peers: BullMQ (Node; Queue.add, and Queue.addBulk of 100) and arq (Python), full
  lifecycles/s of a no-op job, their workers talking straight to the store;
- codeq: `codeq serve` on the same store, full lifecycles (create -> claim -> result)
  over each transport mode in MODES.

Then, when a KVRocks binary is at hand ($KVROCKS_BIN or ../shared/kvrocks/kvrocks;
`--no-kvrocks` skips it), the same codeq modes of KVROCKS_MODES on KVRocks with
config/kvrocks.conf, once with rocksdb.write_options.sync yes (as shipped) and once
with sync no, and a table of each figure ÷ the embedded Redis's of the same run.

For every lifecycle row: lifecycles/s, the ratio to BullMQ and to the unpipelined
EVALSHA ceiling (same run), created->claimed (for peers: added->started) latency
p50/p99, and the store's CPU per lifecycle (utime+stime of the redis-server process
from /proc, before/after each round). The store is flushed before each peer round
and before the daemon starts. Claim latency at depth, daemon memory and delayed-task
lateness: bench/depth.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import uvloop
from common import (
    BENCH_CONFIG,
    Api,
    Daemon,
    NotBuilt,
    StoreServer,
    cpu_seconds,
    free_port,
    kvrocks_binary,
    percentile,
)

BENCH = Path(__file__).resolve().parent
BULLMQ_DIR = BENCH / "peers" / "bullmq"
ARQ_VENV = BENCH / "peers" / ".venv-arq"
# The modes measured on KVRocks too (beside the embedded Redis, in the same run).
KVROCKS_MODES = ("http", "http-batch-100", "websocket")
PRODUCERS = 8
WORKERS = 16
BATCH = 100


class Unavailable(Exception):
    """A row that cannot be measured on this machine or this daemon (yet); says why."""


@dataclass
class Round:
    """One measured round: n lifecycles in `seconds`, created->claimed latencies (ms)."""

    n: int
    seconds: float
    p50_ms: float
    p99_ms: float
    store_cpu_s: float = 0.0
    daemon_cpu_s: float | None = None


@dataclass
class Row:
    name: str
    rounds: list[Round] = field(default_factory=list)
    skipped: str | None = None

    def median(self, pick: Callable[[Round], float]) -> float:
        return statistics.median(pick(r) for r in self.rounds)

    @property
    def rate(self) -> float:
        return self.median(lambda r: r.n / r.seconds)


def machine_notes(store: StoreServer, redis_version: str) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    node = shutil.which("node")
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        if node
        else "absent"
    )
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return [
        f"nproc {len(os.sched_getaffinity(0))}; {cpu}; {mem_kib / 2**20:.0f} GiB RAM; "
        f"Linux {platform.release()}",
        f"python {platform.python_version()} (uvloop for the load generators), "
        f"node {node_version}, redis-server {redis_version} ({store.binary})",
        "store: one redis-server, appendonly yes, appendfsync everysec, no RDB, TCP loopback",
    ]


# ---------------------------------------------------------------- the store's ceiling


async def evalsha_rate(store: StoreServer, seconds: float, pipeline: int) -> float:
    """EVALSHA of `return 1` per second from one connection; `pipeline` per round trip."""
    redis = store.client()
    try:
        sha = await redis.script_load("return 1")
        done, started = 0, time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            if pipeline == 1:
                for _ in range(100):
                    await redis.evalsha(sha, 0)
                done += 100
            else:
                async with redis.pipeline(transaction=False) as pipe:
                    for _ in range(pipeline):
                        pipe.evalsha(sha, 0)
                    await pipe.execute()
                done += pipeline
        return done / (time.perf_counter() - started)
    finally:
        await redis.aclose()


# ---------------------------------------------------------------- peers


def bullmq_command() -> list[str]:
    """The BullMQ peer's command, installing its node_modules on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise Unavailable("node/npm not found: BullMQ (a Node library) is not measured")
    if not (BULLMQ_DIR / "node_modules" / "bullmq" / "package.json").exists():
        print("  installing BullMQ (npm ci --prefix bench/peers/bullmq) ...", flush=True)
        subprocess.run(
            [npm, "ci", "--prefix", str(BULLMQ_DIR), "--no-audit", "--no-fund", "--silent"],
            check=True,
        )
    return [node, str(BULLMQ_DIR / "bench.mjs")]


def arq_command() -> list[str]:
    """The arq peer's command, in its own virtualenv (made on first use)."""
    python = ARQ_VENV / "bin" / "python"
    check = [str(python), "-c", "import arq"]
    if not python.exists() or subprocess.run(check, capture_output=True).returncode != 0:
        print("  installing arq into bench/peers/.venv-arq ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(ARQ_VENV)], check=True)
        requirements = BENCH / "peers" / "arq-requirements.txt"
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True
        )
    return [str(python), str(BENCH / "peers" / "arq_bench.py")]


async def peer_round(store: StoreServer, command: list[str], n: int) -> Round:
    """Runs a peer script on an empty store; its JSON line plus the store CPU it cost."""
    redis = store.client()
    await redis.flushall()
    await redis.aclose()
    argv = [*command, "--redis", store.url, "--n", str(n)]
    cpu0 = store.cpu_seconds()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    store_cpu = store.cpu_seconds() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    figures = json.loads(out.decode().strip().splitlines()[-1])
    return Round(
        n, n / figures["lifecycles_per_s"], figures["p50_ms"], figures["p99_ms"], store_cpu
    )


PEERS: dict[str, tuple[Callable[[], list[str]], list[str]]] = {
    "bullmq": (bullmq_command, []),
    "bullmq-bulk-100": (bullmq_command, ["--bulk", str(BATCH)]),
    "arq": (arq_command, []),
}


# ---------------------------------------------------------------- codeq modes


def claimed_latency(task: dict[str, object], claimed: float) -> float:
    created = datetime.fromisoformat(str(task["createdAt"])).timestamp()
    return (claimed - created) * 1000


async def drive(
    n: int,
    producers: int,
    chunk: int,
    workers: int,
    produce: Callable[[int], Awaitable[None]],
    work: Callable[[], Awaitable[list[float]]],
) -> tuple[float, list[float]]:
    """Runs `producers` loops (each call creates up to `chunk` tasks) and `workers` loops
    (each call claims and completes some, returning their created->claimed latencies)
    until n lifecycles are done; returns (seconds, latencies)."""
    remaining = n
    latencies: list[float] = []
    done = asyncio.Event()

    async def producer() -> None:
        nonlocal remaining
        while remaining > 0:
            count = min(chunk, remaining)
            remaining -= count
            await produce(count)

    async def worker() -> None:
        while not done.is_set():
            latencies.extend(await work())
            if len(latencies) >= n:
                done.set()

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        running = [group.create_task(worker()) for _ in range(workers)]
        for _ in range(producers):
            group.create_task(producer())
        await done.wait()
        elapsed = time.perf_counter() - started
        for task in running:  # parked in a long-poll: the round is over
            task.cancel()
    return elapsed, latencies


async def http_single(api: Api, command: str, n: int) -> tuple[float, list[float]]:
    """One task per request: POST /tasks, POST /tasks/claim (long-poll), POST result."""

    async def produce(count: int) -> None:
        await api.create({"command": command, "payload": {"n": 1}})

    async def work() -> list[float]:
        task = await api.claim([command], wait=1)
        if task is None:
            return []
        latency = claimed_latency(task, time.time())
        await api.complete(task)
        return [latency]

    return await drive(n, PRODUCERS, 1, WORKERS, produce, work)


async def http_batch(api: Api, command: str, n: int) -> tuple[float, list[float]]:
    """100 tasks per request: POST /tasks/batch, /tasks/claim/batch, /tasks/batch/results."""
    body = {"command": command, "payload": {"n": 1}}

    async def produce(count: int) -> None:
        await api.create_batch([body] * count)

    async def work() -> list[float]:
        tasks = await api.claim_batch([command], count=BATCH, wait=1)
        if not tasks:
            return []
        claimed = time.time()
        await api.complete_batch(tasks)
        return [claimed_latency(t, claimed) for t in tasks]

    return await drive(n, PRODUCERS, BATCH, 4, produce, work)


async def probe_batch(api: Api) -> None:
    """Raises NotBuilt unless the daemon serves the three batch routes."""
    created = await api.create_batch([{"command": "bench-probe", "payload": {}}])
    assert len(created) == 1
    tasks = await api.claim_batch(["bench-probe"], count=1, wait=1)
    await api.complete_batch(tasks)


async def websocket(api: Api, command: str, n: int) -> tuple[float, list[float]]:
    """Streams (codeq.client.stream): one ProducerStream, one task per create frame from
    8 loops; one WorkerStream with 16 credits (the server pushes, results are batched
    into frames by the client) served by 16 loops."""
    from codeq.client.stream import ProducerStream, WorkerStream

    url = api.ws_url
    assert url is not None
    body = {"command": command, "payload": {"n": 1}}
    async with (
        ProducerStream(url, api.token) as producer,
        WorkerStream(url, api.token, credits=WORKERS) as worker,
    ):

        async def produce(count: int) -> None:
            await producer.create_from(body)

        async def work() -> list[float]:
            task = await worker.claim([command], wait_seconds=1)
            if task is None:
                return []
            latency = claimed_latency(task, time.time())
            await worker.submit_result(
                str(task["id"]), task.get("leaseToken"), status="COMPLETED", result={}
            )
            return [latency]

        return await drive(n, PRODUCERS, 1, WORKERS, produce, work)


async def websocket_batch(api: Api, command: str, n: int) -> tuple[float, list[float]]:
    """Streams with batches: create frames of 100 tasks (ProducerStream.create_many), a
    WorkerStream holding up to 1,000 credits served by 256 loops; results go back in
    frames the client batches. The stream's counterpart of BullMQ's addBulk and a
    worker with high concurrency."""
    from codeq.client.stream import ProducerStream, WorkerStream

    url = api.ws_url
    assert url is not None
    body = {"command": command, "payload": {"n": 1}}
    async with (
        ProducerStream(url, api.token) as producer,
        WorkerStream(url, api.token, credits=1000) as worker,
    ):

        async def produce(count: int) -> None:
            await producer.create_many([body] * count)

        async def work() -> list[float]:
            task = await worker.claim([command], wait_seconds=1)
            if task is None:
                return []
            latency = claimed_latency(task, time.time())
            await worker.submit_result(
                str(task["id"]), task.get("leaseToken"), status="COMPLETED", result={}
            )
            return [latency]

        return await drive(n, 1, BATCH, 256, produce, work)


async def probe_websocket(api: Api) -> None:
    if importlib.util.find_spec("codeq.client.stream") is None:
        raise Unavailable("codeq.client has no WebSocket client (codeq.client.stream) yet")
    if api.ws_url is None:
        raise Unavailable("the daemon has no websocket transport (entry point) yet")


async def no_probe(api: Api) -> None:
    return None


# A transport mode: (probe that raises NotBuilt/Unavailable, lifecycles(api, command, n)).
# A new mode is one function and one line here.
Mode = tuple[
    Callable[[Api], Awaitable[None]],
    Callable[[Api, str, int], Awaitable[tuple[float, list[float]]]],
]
MODES: dict[str, Mode] = {
    "http": (no_probe, http_single),
    "http-batch-100": (probe_batch, http_batch),
    "websocket": (probe_websocket, websocket),
    "websocket-batch-100": (probe_websocket, websocket_batch),
}


def transport_names() -> set[str]:
    """The transports this install of codeq can serve (its entry points)."""
    return {e.name for e in importlib.metadata.entry_points(group="codeq.transports")}


async def codeq_rows(
    store: StoreServer, names: list[str], n: int, rounds: int, root: Path
) -> list[Row]:
    redis = store.client()
    await redis.flushall()
    await redis.aclose()
    config: dict[str, object] = dict(BENCH_CONFIG)
    ws_port = None
    if any(name.startswith("websocket") for name in names) and "websocket" in transport_names():
        ws_port = free_port()
        config |= {"transports": ["http", "websocket"], "websocketPort": ws_port}
    daemon = Daemon(root, "codeq", {}, config, store=store.addr)
    rows = []
    try:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:
            await daemon.ready(http)
            api = Api(http, daemon)
            api.ws_url = f"ws://127.0.0.1:{ws_port}" if ws_port else None
            for name in names:
                probe, lifecycles = MODES[name]
                row = Row(f"codeq {name}")
                rows.append(row)
                try:
                    await probe(api)
                    await lifecycles(api, f"warm-{name}", max(n // 10, BATCH))
                except (NotBuilt, Unavailable) as why:
                    row.skipped = str(why)
                    print(f"  codeq {name}: skipped: {why}", flush=True)
                    continue
                for i in range(rounds):
                    cpu0, dcpu0 = store.cpu_seconds(), cpu_seconds(daemon.proc.pid)
                    try:
                        seconds, lat = await lifecycles(api, f"bench-{name}-{i}", n)
                    except* AssertionError as failed:  # a request the daemon refused
                        row.skipped = f"failed: {failed.exceptions[0]}"
                    if row.skipped:
                        row.rounds.clear()
                        print(f"  codeq {name}: {row.skipped}", flush=True)
                        break
                    row.rounds.append(
                        Round(
                            n,
                            seconds,
                            percentile(lat, 0.5),
                            percentile(lat, 0.99),
                            store.cpu_seconds() - cpu0,
                            cpu_seconds(daemon.proc.pid) - dcpu0,
                        )
                    )
                    print(f"  codeq {name} round {i + 1}: {n / seconds:,.0f}/s", flush=True)
    finally:
        daemon.stop()
    return rows


# ---------------------------------------------------------------- the report


def ratio(value: float, base: float | None) -> str:
    return f"{value / base:.3f}" if base else "—"


def print_table(rows: list[Row], ceiling: float, bullmq: float | None) -> None:
    header = (
        "mode",
        "lifecycles/s",
        "ratio to BullMQ",
        "ratio to EVALSHA",
        "created→claimed p50 / p99 ms",
        "store CPU µs/lc",
        "daemon CPU µs/lc",
    )
    lines = [header]
    for row in rows:
        if row.skipped:
            lines.append((row.name, "skipped", "", "", row.skipped, "", ""))
            continue
        daemon = (
            f"{row.median(lambda r: (r.daemon_cpu_s or 0) / r.n * 1e6):,.0f}"
            if row.rounds[0].daemon_cpu_s is not None
            else "—"
        )
        lines.append(
            (
                row.name,
                f"{row.rate:,.0f}",
                ratio(row.rate, bullmq),
                ratio(row.rate, ceiling),
                f"{row.median(lambda r: r.p50_ms):,.1f} / {row.median(lambda r: r.p99_ms):,.1f}",
                f"{row.median(lambda r: r.store_cpu_s / r.n * 1e6):,.0f}",
                daemon,
            )
        )
    print("| " + " | ".join(lines[0]) + " |")
    print("|" + "---|" * len(header))
    for line in lines[1:]:
        print("| " + " | ".join(line) + " |")


def print_store_table(redis_rows: list[Row], on_kvrocks: dict[str, list[Row]]) -> None:
    """lifecycles/s and store CPU per lifecycle of each mode on each store, with the
    ratio KVRocks ÷ embedded Redis."""
    by_name = {row.name: row for row in redis_rows if row.rounds}
    header = ["mode", "embedded Redis lc/s", "store CPU µs/lc"]
    for label in on_kvrocks:
        header += [f"{label} lc/s (÷ Redis)", "store CPU µs/lc (÷ Redis)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    def cpu(row: Row) -> float:
        return row.median(lambda r: r.store_cpu_s / r.n * 1e6)

    for name in (row.name for row in next(iter(on_kvrocks.values()))):
        base = by_name.get(name)
        cells = [name, f"{base.rate:,.0f}" if base else "—", f"{cpu(base):,.0f}" if base else "—"]
        for rows in on_kvrocks.values():
            row = next(r for r in rows if r.name == name)
            if not row.rounds:  # why, shortened: "failed: POST /tasks/claim/batch: 503 …"
                cells += [(row.skipped or "skipped")[:60], ""]
                continue
            cells += [
                f"{row.rate:,.0f} ({ratio(row.rate, base.rate if base else None)})",
                f"{cpu(row):,.0f} ({ratio(cpu(row), cpu(base) if base else None)})",
            ]
        print("| " + " | ".join(cells) + " |")


async def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    chosen = args.only or [*PEERS, *MODES]
    store = StoreServer()
    try:
        await store.ready()
        redis = store.client()
        redis_version = (await redis.info("server"))["redis_version"]
        await redis.aclose()
        notes = machine_notes(store, redis_version)
        print("machine: " + "\n         ".join(notes), flush=True)

        await evalsha_rate(store, 0.3, 1)  # warm-up: connection, script cache
        unpiped, piped = [], []
        for _ in range(args.rounds):
            unpiped.append(await evalsha_rate(store, 1.5, 1))
            piped.append(await evalsha_rate(store, 1.5, BATCH))
        ceiling = statistics.median(unpiped)
        print(
            f"store ceiling, EVALSHA 'return 1' from one asyncio redis-py client: "
            f"{ceiling:,.0f} ops/s unpipelined, {statistics.median(piped):,.0f} ops/s "
            f"pipelined ({BATCH} per round trip)",
            flush=True,
        )

        rows: list[Row] = []
        for name, (setup, extra) in PEERS.items():
            if name not in chosen:
                continue
            row = Row(name)
            rows.append(row)
            try:
                command = [*setup(), *extra]
            except Unavailable as why:
                row.skipped = str(why)
                print(f"  {name}: skipped: {why}", flush=True)
                continue
            await peer_round(store, command, max(args.n // 10, BATCH))  # warm-up
            for i in range(args.rounds):
                row.rounds.append(await peer_round(store, command, args.n))
                print(f"  {name} round {i + 1}: {row.rounds[-1].n / row.rounds[-1].seconds:,.0f}/s")
        modes = [m for m in MODES if m in chosen]
        if modes:
            with tempfile.TemporaryDirectory(prefix="cq-bench-", dir="/tmp") as tmp:
                rows += await codeq_rows(store, modes, args.n, args.rounds, Path(tmp))
    finally:
        store.stop()

    on_kvrocks: dict[str, list[Row]] = {}
    kv_modes = [m for m in KVROCKS_MODES if m in chosen]
    if kv_modes and not args.no_kvrocks:
        if kvrocks_binary() is None:
            print("KVRocks: skipped (no binary; set KVROCKS_BIN=/path/to/kvrocks)")
        for sync in (True, False) if kvrocks_binary() else ():
            label = f"KVRocks sync {'yes' if sync else 'no'}"
            print(f"{label} (config/kvrocks.conf):", flush=True)
            kv_store = StoreServer("kvrocks", sync=sync)
            try:
                await kv_store.ready()
                with tempfile.TemporaryDirectory(prefix="cq-bench-", dir="/tmp") as tmp:
                    on_kvrocks[label] = await codeq_rows(
                        kv_store, kv_modes, args.n, args.rounds, Path(tmp)
                    )
            finally:
                kv_store.stop()

    bullmq = next((r.rate for r in rows if r.name == "bullmq" and r.rounds), None)
    print()
    print(f"N = {args.n:,} lifecycles per round, {args.rounds} rounds, medians:")
    print_table(rows, ceiling, bullmq)
    if on_kvrocks:
        print("\ncodeq on KVRocks beside the embedded Redis (same run, same modes):")
        print_store_table(rows, on_kvrocks)
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=[*PEERS, *MODES],
        help="measure only this row (repeatable); the store ceiling is always measured",
    )
    parser.add_argument("--n", type=int, default=10_000, help="lifecycles per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-kvrocks", action="store_true", help="skip the KVRocks rows (codeq on KVRocks)"
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main(parser.parse_args()))
