"""arq full lifecycles per second (enqueue -> run -> result), for bench/run.py.

    python bench/peers/arq_bench.py --redis redis://127.0.0.1:6379 --n 10000

Runs in its own virtualenv (arq pins redis-py < 6, codeq's .venv does not): bench/run.py
makes it. One worker process (a no-op job, max_jobs 16, poll delay 5 ms, results kept
60 s as codeq keeps results) and one producer process (this one, 8 concurrent enqueue
loops) on the same machine. Prints one JSON line: lifecycles_per_s, n, seconds,
enqueued->started latency p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import time
from datetime import UTC, datetime
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker

QUEUE = "arq:bench"


async def noop(ctx: dict[str, Any]) -> None:
    ctx["latencies"].append((datetime.now(UTC) - ctx["enqueue_time"]).total_seconds() * 1000)


def work(redis: str, n: int, max_jobs: int, ready: Any, report: Any) -> None:
    """The worker process: runs n jobs, then reports when it finished and the latencies."""
    latencies: list[float] = []
    done = asyncio.Event()

    async def on_startup(ctx: dict[str, Any]) -> None:
        ctx["latencies"] = latencies
        ready.set()

    async def after_job_end(ctx: dict[str, Any]) -> None:
        if len(latencies) >= n:
            # CLOCK_MONOTONIC is system-wide: the producer compares it with its start.
            report.send({"ended": time.monotonic(), "latencies": latencies})
            done.set()

    async def run() -> None:
        # arq's Worker takes the event loop in its constructor: build it inside the loop.
        worker = Worker(
            functions=[noop],
            redis_settings=RedisSettings.from_dsn(redis),
            queue_name=QUEUE,
            max_jobs=max_jobs,
            poll_delay=0.005,
            keep_result=60,
            on_startup=on_startup,
            after_job_end=after_job_end,
            handle_signals=False,
        )
        main = asyncio.create_task(worker.main())
        await done.wait()
        # The last job is still in its after_job_end: let it end, or close() cancels it.
        running = [t for t in worker.tasks.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=5)
        main.cancel()  # arq's close() only cancels a main it started itself
        with contextlib.suppress(asyncio.CancelledError):
            await main
        await worker.close()

    asyncio.run(run())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def produce(redis: str, n: int, producers: int) -> float:
    pool = await create_pool(RedisSettings.from_dsn(redis), default_queue_name=QUEUE)
    remaining = n

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await pool.enqueue_job("noop")

    started = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(producers)))
    await pool.aclose()
    return started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--producers", type=int, default=8, help="concurrent enqueue loops")
    parser.add_argument("--max-jobs", type=int, default=16)
    args = parser.parse_args()
    ready = multiprocessing.Event()
    receive, send = multiprocessing.Pipe(duplex=False)
    worker = multiprocessing.Process(
        target=work, args=(args.redis, args.n, args.max_jobs, ready, send), daemon=True
    )
    worker.start()
    if not ready.wait(30):
        raise SystemExit("arq worker did not start")
    started = asyncio.run(produce(args.redis, args.n, args.producers))
    report = receive.recv()
    worker.join(30)
    seconds = report["ended"] - started
    print(
        json.dumps(
            {
                "lifecycles_per_s": args.n / seconds,
                "n": args.n,
                "seconds": seconds,
                "p50_ms": percentile(report["latencies"], 0.5),
                "p99_ms": percentile(report["latencies"], 0.99),
            }
        )
    )


if __name__ == "__main__":
    main()
