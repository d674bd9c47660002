"""Depth, memory and lateness: what bench/run.py's throughput rows do not show.

    .venv/bin/python bench/depth.py [--deep 1000000] [--samples 300] [--delayed 2000]

On one redis-server configured as the embedded store (AOF everysec) and `codeq serve`
on it, measures, through the HTTP API only:

- claim latency (one unpipelined POST /tasks/claim after another) with 100 and with
  `--deep` tasks queued in the claimed command, p50/p99 and the ratio deep/shallow;
  the deep queue is loaded with POST /tasks/batch (1000 per request); a daemon
  without it gets 100,000 tasks created one by one instead, and the report says so;
- the daemon's RSS (VmRSS) and the store's, before and with the deep queue loaded;
- delayed-task lateness: `--delayed` tasks due (runAt) over `--spread` seconds,
  claimed by 16 long-polling workers; lateness = claim answered - due, p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import uvloop
from common import BENCH_CONFIG, Api, Daemon, NotBuilt, StoreServer, percentile, rss_bytes

BATCH = 1000
FALLBACK_DEPTH = 100_000


async def fill(api: Api, command: str, count: int, batched: bool) -> float:
    """Queues `count` tasks of `command`; returns tasks/s."""
    remaining = count
    body = {"command": command, "payload": {"n": 1}}

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            chunk = min(BATCH if batched else 1, remaining)
            remaining -= chunk
            if batched:
                await api.create_batch([body] * chunk)
            else:
                await api.create(body)

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(4 if batched else 16)))
    return count / (time.perf_counter() - started)


async def claim_latency(api: Api, command: str, samples: int) -> list[float]:
    """Milliseconds per claim, one after the other, on a queue that never runs dry."""
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        task = await api.claim([command], wait=0)
        assert task is not None
        out.append((time.perf_counter() - started) * 1000)
    return out


def rfc3339(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def lateness(api: Api, count: int, spread: float, batched: bool) -> list[float]:
    """Milliseconds from each delayed task's due time to its claim by a long-poller."""
    command = "delayed"
    first_due = time.time() + 1.0
    dues = [round(first_due + spread * i / count, 3) for i in range(count)]
    bodies = [{"command": command, "payload": {}, "runAt": rfc3339(due)} for due in dues]
    if batched:
        for start in range(0, count, BATCH):
            await api.create_batch(bodies[start : start + BATCH])
    else:
        await asyncio.gather(*(api.create(body) for body in bodies))
    assert time.time() < first_due, "creating the delayed tasks took longer than their delay"
    late: list[float] = []

    async def worker() -> None:
        while len(late) < count:
            task = await api.claim([command], wait=1)
            if task is None:
                continue
            claimed = time.time()
            due = datetime.fromisoformat(str(task["runAt"])).timestamp()
            late.append((claimed - due) * 1000)
            await api.complete(task)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(16))), spread + 30)
    return late


async def pickup(api: Api, rate: float, seconds: float) -> list[float]:
    """Milliseconds from each task's creation (its createdAt) to its claim by one of 16
    long-polling workers, while one producer creates `rate` tasks a second: the
    created->claimed latency at moderate load, not queueing at saturation."""
    command = "pickup"
    total = int(rate * seconds)
    waits: list[float] = []

    async def produce() -> None:
        started = time.monotonic()
        for i in range(total):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            await api.create({"command": command, "payload": {}})

    async def worker() -> None:
        while len(waits) < total:
            task = await api.claim([command], wait=1)
            if task is None:
                continue
            created = datetime.fromisoformat(str(task["createdAt"])).timestamp()
            waits.append((time.time() - created) * 1000)
            await api.complete(task)

    await asyncio.wait_for(asyncio.gather(produce(), *(worker() for _ in range(16))), seconds + 30)
    return waits


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


async def main(args: argparse.Namespace) -> None:
    store = StoreServer()
    try:
        await store.ready()
        with tempfile.TemporaryDirectory(prefix="cq-bench-depth-", dir="/tmp") as tmp:
            daemon = Daemon(Path(tmp), "codeq", {}, BENCH_CONFIG, store=store.addr)
            try:
                async with aiohttp.ClientSession() as http:
                    await daemon.ready(http)
                    await measure(Api(http, daemon), daemon, store, args)
            finally:
                daemon.stop()
    finally:
        store.stop()


async def measure(api: Api, daemon: Daemon, store: StoreServer, args: argparse.Namespace) -> None:
    try:
        await api.create_batch([{"command": "probe", "payload": {}}])
        batched, deep = True, args.deep
    except NotBuilt:
        batched, deep = False, min(args.deep, FALLBACK_DEPTH)
        print(f"no POST /tasks/batch yet: the deep queue is {deep:,} tasks, created one by one")
    await fill(api, "shallow", 100 + args.samples, batched)
    await claim_latency(api, "shallow", 20)  # warm-up
    shallow = await claim_latency(api, "shallow", args.samples)
    before = rss_bytes(daemon.proc.pid), rss_bytes(store.pid)
    rate = await fill(api, "deep", deep + args.samples, batched)
    loaded = rss_bytes(daemon.proc.pid), rss_bytes(store.pid)
    deep_lat = await claim_latency(api, "deep", args.samples)
    print(f"loaded {deep + args.samples:,} tasks at {rate:,.0f}/s")
    for depth, lat in ((100, shallow), (deep, deep_lat)):
        print(
            f"claim latency at {depth:>9,} queued: p50 {statistics.median(lat):.2f} ms, "
            f"p99 {percentile(lat, 0.99):.2f} ms"
        )
    ratio = statistics.median(deep_lat) / statistics.median(shallow)
    print(f"claim p50 ratio deep/shallow: {ratio:.2f}")
    print(
        f"RSS before: daemon {mib(before[0])}, store {mib(before[1])}; with {deep:,} queued: "
        f"daemon {mib(loaded[0])}, store {mib(loaded[1])}"
    )
    waits = await pickup(api, args.pickup_rate, 4.0)
    print(
        f"created->claimed at {args.pickup_rate:g} tasks/s (16 long-polling HTTP workers): "
        f"p50 {statistics.median(waits):.1f} ms, p99 {percentile(waits, 0.99):.1f} ms"
    )
    late = await lateness(api, args.delayed, args.spread, batched)
    print(
        f"delayed-task lateness ({args.delayed:,} tasks due over {args.spread:g} s, 16 "
        f"long-polling workers): p50 {statistics.median(late):.1f} ms, "
        f"p99 {percentile(late, 0.99):.1f} ms, max {max(late):.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deep", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--delayed", type=int, default=2000)
    parser.add_argument("--spread", type=float, default=3.0)
    parser.add_argument("--pickup-rate", type=float, default=300.0, help="tasks/s")
    uvloop.run(main(parser.parse_args()))
