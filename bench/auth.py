"""Auth benchmark: the per-request cost of static vs JWKS auth, in one run.

    .venv/bin/python bench/auth.py [--seconds 1] [--rounds 8] [--concurrency 16]

Starts two `codeq serve` daemons (each on its embedded store) whose configs differ
only in auth: one with static tokens, one with JWKS (`file://`, ES256 tokens made
with `codeq token`). Then measures authenticated GET /v1/codeq/tasks/{id} on one
task, in short slices interleaved across the cases so machine noise hits them all
(median and range reported): requests/s with a static token, with one JWKS token
(verified once, then served from the verified-token cache), and with a fresh JWKS
token per request (a signature check each time). Also prints the in-process cost
of one verify() call for each case.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from common import Daemon, create_task, rate
from jwcrypto import jwt

from codeq.auth import StaticProvider
from codeq.auth.jwks import JwksProvider, KeySet
from codeq.auth.tokens import KeyFiles, TokenRequest, init_keys, load_signing_key, token_claims
from codeq.observability import configure_logging

STATIC_TOKEN = "bench-static-token-acme-000001"
CLAIMS = {"sub": "svc-a", "tenantId": "acme"}


def jwks_tokens(files: KeyFiles, count: int) -> list[str]:
    """`count` distinct producer tokens (each has its own jti), as `codeq token mint`
    makes them, signed with the key loaded once."""
    key = load_signing_key(files)
    request = TokenRequest(role="producer", subject="svc-a", tenant="acme", ttl_seconds=3600)
    tokens = []
    for _ in range(count):
        token = jwt.JWT(
            header={"alg": "ES256", "kid": key.get("kid"), "typ": "JWT"},
            claims=token_claims(request, worker_audience="codeq-worker"),
        )
        token.make_signed_token(key)
        tokens.append(str(token.serialize()))
    return tokens


async def verify_cost(files: KeyFiles, fresh: list[str]) -> dict[str, float]:
    """Microseconds per verify() call, in process."""
    static = StaticProvider({STATIC_TOKEN: CLAIMS})
    keys = KeySet(f"file://{files.jwks}")
    jwks = JwksProvider(keys)
    results: dict[str, float] = {}

    async def per_call(name: str, call: Callable[[int], Awaitable[object]], n: int) -> None:
        started = time.perf_counter()
        for i in range(n):
            await call(i)
        results[name] = (time.perf_counter() - started) / n * 1e6

    try:
        await per_call("static", lambda i: static.verify(STATIC_TOKEN), 20_000)
        await jwks.verify(fresh[0])
        await per_call("jwks, cached", lambda i: jwks.verify(fresh[0]), 20_000)
        await per_call("jwks, new token", lambda i: jwks.verify(fresh[1 + i]), len(fresh) - 1)
    finally:
        await keys.aclose()
    return results


async def main(args: argparse.Namespace) -> None:
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory(prefix="cq-bench-auth-", dir="/tmp") as tmp:
        root = Path(tmp)
        files = KeyFiles(root / "keys")
        init_keys(files)
        jwks_url = f"file://{files.jwks}"
        static = Daemon(root, "static", {}, {"staticTokens": {STATIC_TOKEN: CLAIMS}})
        jwks = Daemon(
            root,
            "jwks",
            {
                "PRODUCER_AUTH_PROVIDER": "jwks",
                "WORKER_AUTH_PROVIDER": "jwks",
                "IDENTITY_JWKS_URL": jwks_url,
                "WORKER_JWKS_URL": jwks_url,
            },
            {},
        )
        try:
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                await static.ready(http)
                await jwks.ready(http)
                per_second_guess = 4000
                fresh = jwks_tokens(files, int(per_second_guess * args.seconds * args.rounds))
                one_jwks = fresh.pop()
                static_task = await create_task(http, static, STATIC_TOKEN)
                jwks_task = await create_task(http, jwks, one_jwks)
                static_url = f"{static.url}/v1/codeq/tasks/{static_task}"
                jwks_url_get = f"{jwks.url}/v1/codeq/tasks/{jwks_task}"
                fresh_iter = iter(fresh)
                cases: dict[str, tuple[str, Callable[[], str]]] = {
                    "static token": (static_url, lambda: STATIC_TOKEN),
                    "jwks token (cached)": (jwks_url_get, lambda: one_jwks),
                    "jwks, new token each request": (jwks_url_get, lambda: next(fresh_iter)),
                }
                figures: dict[str, list[float]] = {name: [] for name in cases}
                await rate(http, static_url, lambda: STATIC_TOKEN, 0.5, args.concurrency)  # warm
                await rate(http, jwks_url_get, lambda: one_jwks, 0.5, args.concurrency)
                for _ in range(args.rounds):
                    for name, (url, token) in cases.items():
                        figures[name].append(
                            await rate(http, url, token, args.seconds, args.concurrency)
                        )
        finally:
            static.stop()
            jwks.stop()
        baseline = statistics.median(figures["static token"])
        print(
            f"GET /v1/codeq/tasks/{{id}}, {args.concurrency} concurrent clients, "
            f"{args.rounds} x {args.seconds:g} s per case (median):"
        )
        for name, values in figures.items():
            value = statistics.median(values)
            spread = f"({min(values):,.0f}-{max(values):,.0f})"
            print(
                f"  {name:<30} {value:8,.0f} req/s {spread:>15}   ratio to static "
                f"{value / baseline:.3f}"
            )
        costs = await verify_cost(files, jwks_tokens(files, 2001))
        print("verify() per call, in process:")
        for name, micros in costs.items():
            print(f"  {name:<30} {micros:8.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=8, help="slices per case, interleaved")
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(main(parser.parse_args()))
