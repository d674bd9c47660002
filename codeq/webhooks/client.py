"""The HTTP client of outbound webhooks: one aiohttp session behind the URL guard,
signing every body, bounding every request by a timeout, never following redirects,
and counting each attempt in the webhook metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from codeq import metrics
from codeq.webhooks.guard import GuardedResolver, RefusedTarget, UrlGuard, refused_cause
from codeq.webhooks.signing import signed_headers

USER_AGENT = "codeq-webhooks/1"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one POST went. `outcome`: success, failure (an HTTP error status or a
    connection error), timeout, or refused (the URL guard said no: retrying cannot
    help)."""

    outcome: str
    status: int | None = None
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "success"


class WebhookClient:
    """Posts signed JSON bodies to webhook URLs. Start with start(), close with
    aclose()."""

    def __init__(self, *, secret: str | None, guard: UrlGuard, max_connections: int = 100) -> None:
        self.guard = guard
        self._secret = secret
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.guard), limit=self._max_connections
        )
        self._session = aiohttp.ClientSession(
            connector=connector, headers={"User-Agent": USER_AGENT}
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        url: str,
        body: bytes,
        *,
        kind: str,
        command: str,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> Delivery:
        """POSTs `body`; 2xx is a success. Never raises for the target's failures."""
        assert self._session is not None, "WebhookClient.start() was not called"
        started = time.perf_counter()
        delivery = await self._attempt(url, body, timeout, headers or {})
        delivery = Delivery(
            delivery.outcome, delivery.status, delivery.error, time.perf_counter() - started
        )
        metrics.WEBHOOK_DELIVERIES.labels(kind, command, delivery.outcome).inc()
        metrics.WEBHOOK_LATENCY.labels(kind, delivery.outcome).observe(delivery.seconds)
        return delivery

    async def _attempt(
        self, url: str, body: bytes, timeout: float, headers: dict[str, str]
    ) -> Delivery:
        assert self._session is not None
        try:
            target = self.guard.target(url)  # the host as checked, whatever its spelling
        except RefusedTarget as exc:
            return Delivery("refused", error=str(exc))
        all_headers = {
            "Content-Type": "application/json",
            **headers,
            **signed_headers(self._secret, body),
        }
        try:
            async with self._session.post(
                target,
                data=body,
                headers=all_headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return Delivery("success", resp.status)
                return Delivery("failure", resp.status, f"HTTP {resp.status}")
        except TimeoutError:
            return Delivery("timeout", error=f"no answer within {timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            refused = refused_cause(exc)
            if refused is not None:
                return Delivery("refused", error=str(refused))
            return Delivery("failure", error=str(exc) or type(exc).__name__)
