"""Fair claiming across concurrency keys (issue 15, part 3), measured on the store's
claim script itself (the path every claim -- single, batch, stream -- takes).

    .venv/bin/python bench/fairness.py [--store redis|kvrocks] [--big 100000] [--deep 1000000]

1. Starvation: one key with `--big` tasks queued first, then 50 keys with 10 each;
   batch claims of 100 until every small key has had its first task claimed --
   the time and the tasks claimed until then, with fairness round_robin and without.
2. Claim cost at `--deep` keyed tasks queued (1,000 keys): single claims one after
   another, p50 and mean, fairness on vs off, printed as a ratio (target <= 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import orjson
from common import StoreServer, percentile
from redis.asyncio import Redis

from codeq.store import keys
from codeq.store.scripts import Scripts

TAG = keys.tenant_tag("bench")
P = keys.prefix(TAG)
LOAD = 1000  # tasks per create_batch call


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def load(scripts: Scripts, command: str, key_of: list[str], first: int = 0) -> None:
    """Creates one ready task per entry of `key_of` (its concurrency key), in order;
    their IDs are numbered from `first`."""
    for start in range(0, len(key_of), LOAD):
        batch = [
            [
                f"{TAG}-{command}-{first + start + i}",
                command,
                "{}",
                "0",
                "5",
                "",
                "",
                "0",
                "",
                "",
                "",
                key,
            ]
            for i, key in enumerate(key_of[start : start + LOAD])
        ]
        await scripts(
            "create_batch", P, now_ms(), 60_000, 10, "bench", "bench", orjson.dumps(batch)
        )


async def claim(scripts: Scripts, command: str, count: int) -> list[dict[str, str]]:
    reply = await scripts("claim", P, now_ms(), 600_000, "w", "t", 10, count, command)
    return [dict(zip(flat[::2], flat[1::2], strict=True)) for flat in reply]


async def starvation(redis: Redis, scripts: Scripts, big: int, fair: bool) -> tuple[float, int]:
    """(seconds, tasks claimed) until every small key's first task is claimed."""
    await redis.flushall()
    command = "fair" if fair else "fifo"
    await scripts("queue_settings", P, command, 0, "round_robin" if fair else "")
    await load(scripts, command, ["big"] * big)
    await load(scripts, command, [f"small{k}" for k in range(50) for _ in range(10)], big)
    seen: set[str] = set()
    claimed = 0
    started = time.perf_counter()
    while len(seen) < 50:
        tasks = await claim(scripts, command, 100)
        assert tasks, "ran dry before every small key was claimed"
        for task in tasks:
            claimed += 1
            if task["concurrencyKey"] != "big":
                seen.add(task["concurrencyKey"])
            if len(seen) == 50:
                break
    return time.perf_counter() - started, claimed


async def claim_cost(scripts: Scripts, command: str, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        tasks = await claim(scripts, command, 1)
        out.append((time.perf_counter() - started) * 1000)
        assert tasks
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", default="redis", choices=("redis", "kvrocks"))
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--deep", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    server = StoreServer(args.store, sync=False)
    try:
        await server.ready()
        redis = server.client()
        scripts = Scripts(redis)
        await scripts.load(redis)

        fifo_s, fifo_n = await starvation(redis, scripts, args.big, fair=False)
        fair_s, fair_n = await starvation(redis, scripts, args.big, fair=True)
        print(f"starvation: 1 key x {args.big:,} then 50 keys x 10")
        print(
            f"  without fairness: every small key's first task after {fifo_s:.3f} s, "
            f"{fifo_n:,} tasks claimed"
        )
        print(
            f"  round_robin:      every small key's first task after {fair_s:.3f} s, "
            f"{fair_n:,} tasks claimed"
        )
        print(f"  ratio without/with: {fifo_s / fair_s:.0f}x time, {fifo_n / fair_n:.0f}x tasks")

        await redis.flushall()
        await load(scripts, "deep", [f"k{i % 1000}" for i in range(args.deep)])
        costs = {}
        for mode in ("", "round_robin", "", "round_robin"):  # interleaved, twice each
            await scripts("queue_settings", P, "deep", 0, mode)
            costs.setdefault(mode, []).extend(await claim_cost(scripts, "deep", args.samples))
        off, on = costs[""], costs["round_robin"]
        print(f"claim cost at {args.deep:,} keyed tasks queued (1,000 keys), single claims:")
        print(
            f"  fairness off: p50 {percentile(off, 0.5):.3f} ms, mean {statistics.mean(off):.3f} ms"
        )
        print(
            f"  round_robin:  p50 {percentile(on, 0.5):.3f} ms, mean {statistics.mean(on):.3f} ms"
        )
        print(
            f"  ratio on/off: p50 {percentile(on, 0.5) / percentile(off, 0.5):.2f}x, "
            f"mean {statistics.mean(on) / statistics.mean(off):.2f}x (target <= 1.5x)"
        )
        await redis.aclose()
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
