"""Lifecycle benchmark: create -> claim -> result over HTTP against a real daemon on
its embedded store (AOF everysec), beside the store's own ceiling measured in the
same run, so the figures survive a noisy machine as ratios.

    .venv/bin/python bench/lifecycle.py [--tasks 5000] [--producers 8] [--workers 16]

Prints lifecycles/s, created->claimed latency percentiles, the store CPU spent per
lifecycle, and claim latency at a shallow vs a deep queue.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from codeq.domain import NewTask
from codeq.store import keys
from codeq.store.store import Store

API = "/v1/codeq"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Daemon:
    """`codeq serve` on its embedded store in a temporary state directory."""

    def __init__(self) -> None:
        self.state = tempfile.mkdtemp(prefix="cq-bench-", dir="/tmp")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "STATE_DIR": self.state,
            "PORT": str(self.port),
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
        }
        env.pop("REDIS_ADDR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codeq", "serve"],
            env=env,
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

    @property
    def token(self) -> str:
        return Path(self.state, "dev-token").read_text().strip()

    @property
    def store_pid(self) -> int:
        return child_pids(self.proc.pid)[0]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


async def store_ceiling(redis: Redis, seconds: float = 2.0) -> float:
    """Unpipelined EVALSHA of a trivial script on one connection: the most
    single-round-trip operations per second this store and client can do."""
    sha = await redis.script_load("return 1")
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(100):
            await redis.evalsha(sha, 0)
        done += 100
    return done / seconds


async def lifecycles(
    http: aiohttp.ClientSession, daemon: Daemon, n: int, producers: int, workers: int, command: str
) -> tuple[float, list[float]]:
    """Runs n create->claim->result lifecycles; returns (seconds, created->claimed ms)."""
    headers = {"Authorization": f"Bearer {daemon.token}"}
    remaining = list(range(n))
    latencies: list[float] = []
    completed = 0
    finished = asyncio.Event()

    async def produce() -> None:
        while remaining:
            remaining.pop()
            async with http.post(
                f"{daemon.url}{API}/tasks",
                headers=headers,
                json={"command": command, "payload": {"n": 1}},
            ) as r:
                assert r.status == 202, await r.text()

    async def work() -> None:
        nonlocal completed
        while not finished.is_set():
            async with http.post(
                f"{daemon.url}{API}/tasks/claim",
                headers=headers,
                json={"commands": [command], "waitSeconds": 1},
            ) as r:
                if r.status == 204:
                    continue
                task = await r.json()
            claimed = time.time()
            created = datetime.fromisoformat(task["createdAt"]).timestamp()
            latencies.append((claimed - created) * 1000)
            async with http.post(
                f"{daemon.url}{API}/tasks/{task['id']}/result",
                headers=headers,
                json={"status": "COMPLETED", "result": {}},
            ) as r:
                assert r.status == 200, await r.text()
            completed += 1
            if completed >= n:
                finished.set()

    start = time.perf_counter()
    worker_tasks = [asyncio.create_task(work()) for _ in range(workers)]
    await asyncio.gather(*(produce() for _ in range(producers)))
    await finished.wait()
    elapsed = time.perf_counter() - start
    for task in worker_tasks:
        task.cancel()
    await asyncio.gather(*worker_tasks, return_exceptions=True)
    return elapsed, latencies


async def fill(store: Store, command: str, count: int) -> None:
    """Queues `count` tasks straight through the store (pipelined), for depth tests."""
    tag = keys.tenant_tag("dev")
    now = int(time.time() * 1000)
    new = NewTask(command=command, payload="{}")
    batch = 50  # concurrent creates; the client's connection pool is bounded
    for start in range(0, count, batch):
        await asyncio.gather(
            *(
                store.create(
                    tag,
                    keys.new_task_id(tag),
                    new,
                    tenant="dev",
                    max_attempts=5,
                    visible_at_ms=0,
                    now_ms=now,
                )
                for _ in range(min(batch, count - start))
            )
        )


async def claim_latency(
    http: aiohttp.ClientSession, daemon: Daemon, command: str, samples: int
) -> list[float]:
    headers = {"Authorization": f"Bearer {daemon.token}"}
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        async with http.post(
            f"{daemon.url}{API}/tasks/claim", headers=headers, json={"commands": [command]}
        ) as r:
            assert r.status == 200
            await r.read()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def main(args: argparse.Namespace) -> None:
    daemon = Daemon()
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.producers + args.workers + 4)
        ) as http:
            await daemon.ready(http)
            redis = Redis(unix_socket_path=f"{daemon.state}/redis.sock", decode_responses=True)
            ceiling = await store_ceiling(redis)
            print(f"store ceiling (EVALSHA 'return 1', unpipelined): {ceiling:,.0f} ops/s")

            await lifecycles(http, daemon, 500, args.producers, args.workers, "warmup")
            cpu0 = cpu_seconds(daemon.store_pid)
            elapsed, lat = await lifecycles(
                http, daemon, args.tasks, args.producers, args.workers, "bench"
            )
            store_cpu_us = (cpu_seconds(daemon.store_pid) - cpu0) / args.tasks * 1e6
            rate = args.tasks / elapsed
            print(
                f"HTTP single-task lifecycles: {args.tasks} in {elapsed:.2f}s = {rate:,.0f}/s "
                f"({3 * rate:,.0f} requests/s); ratio to store ceiling {rate / ceiling:.3f}"
            )
            print(
                f"created->claimed latency ms: p50 {percentile(lat, 0.5):.1f} "
                f"p99 {percentile(lat, 0.99):.1f}"
            )
            print(f"store CPU per lifecycle: {store_cpu_us:.0f} us")

            store = Store(redis, origin="bench")
            await store.connect()
            results = {}
            for depth in (100, args.deep):
                command = f"depth{depth}"
                await fill(store, command, depth + args.samples)
                lat = await claim_latency(http, daemon, command, args.samples)
                results[depth] = lat
                print(
                    f"claim latency at {depth:>9,} queued: p50 {statistics.median(lat):.2f} ms "
                    f"p99 {percentile(lat, 0.99):.2f} ms"
                )
            shallow = statistics.median(results[100])
            deep = statistics.median(results[args.deep])
            print(f"claim p50 ratio deep/shallow: {deep / shallow:.2f}")
            await redis.aclose()
    finally:
        daemon.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--deep", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=300)
    asyncio.run(main(parser.parse_args()))
