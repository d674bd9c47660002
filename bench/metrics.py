"""Metrics benchmark: the per-request cost of metrics, in one run.

    .venv/bin/python bench/metrics.py [--seconds 1] [--rounds 8] [--concurrency 16]

Starts two `codeq serve` daemons (each on its embedded store) whose configs differ
only in `metricsEnabled`, then measures, in short slices interleaved across the
cases so machine noise hits them all (median and range reported), authenticated
GET /v1/codeq/tasks/{id} and POST /v1/codeq/tasks per second, with metrics on and
off; the figure is the ratio "on / off" for each request. Also times one scrape
of /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from common import Daemon, Request, create_task, per_second

from codeq.observability import configure_logging

TOKEN = "bench-static-token-acme-000001"
CONFIG = {"staticTokens": {TOKEN: {"sub": "svc-a", "tenantId": "acme"}}}
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def get_task(url: str) -> Request:
    async def call(http: aiohttp.ClientSession) -> None:
        async with http.get(url, headers=HEADERS) as resp:
            await resp.read()
            assert resp.status == 200, resp.status

    return call


def create(url: str) -> Request:
    async def call(http: aiohttp.ClientSession) -> None:
        async with http.post(url, json={"command": "BENCH"}, headers=HEADERS) as resp:
            await resp.read()
            assert resp.status == 202, resp.status

    return call


async def main(args: argparse.Namespace) -> None:
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory(prefix="cq-bench-metrics-", dir="/tmp") as tmp:
        root = Path(tmp)
        on = Daemon(root, "on", {}, CONFIG)
        off = Daemon(root, "off", {"METRICS_ENABLED": "false"}, CONFIG)
        try:
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                await on.ready(http)
                await off.ready(http)
                cases: dict[str, Request] = {}
                for name, daemon in (("on", on), ("off", off)):
                    task = await create_task(http, daemon, TOKEN)
                    cases[f"GET task, metrics {name}"] = get_task(
                        f"{daemon.url}/v1/codeq/tasks/{task}"
                    )
                    cases[f"POST task, metrics {name}"] = create(f"{daemon.url}/v1/codeq/tasks")
                for request in cases.values():  # warm up
                    await per_second(http, request, 0.3, args.concurrency)
                figures: dict[str, list[float]] = {name: [] for name in cases}
                for _ in range(args.rounds):
                    for name, request in cases.items():
                        figures[name].append(
                            await per_second(http, request, args.seconds, args.concurrency)
                        )
                scrapes = []
                for _ in range(20):
                    started = time.perf_counter()
                    async with http.get(on.url + "/metrics") as resp:
                        await resp.read()
                    scrapes.append((time.perf_counter() - started) * 1000)
        finally:
            on.stop()
            off.stop()
    print(
        f"{args.concurrency} concurrent clients, {args.rounds} x {args.seconds:g} s per case"
        " (median, range):"
    )
    for name, values in figures.items():
        spread = f"({min(values):,.0f}-{max(values):,.0f})"
        print(f"  {name:<24} {statistics.median(values):8,.0f} req/s {spread:>15}")
    for kind in ("GET task", "POST task"):
        ratio = statistics.median(figures[f"{kind}, metrics on"]) / statistics.median(
            figures[f"{kind}, metrics off"]
        )
        print(f"  {kind}: metrics on / off = {ratio:.3f}")
    print(f"  one /metrics scrape: {statistics.median(scrapes):.1f} ms (median of 20)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=8, help="slices per case, interleaved")
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
