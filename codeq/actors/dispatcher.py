"""The callback dispatcher: delivers result callbacks from the durable outbox."""

from __future__ import annotations

import asyncio
import secrets
import time
from urllib.parse import urlsplit

import orjson
import structlog

from codeq import metrics
from codeq.actors.base import Actor, pause_after_error, tenant_failed
from codeq.domain import Callback, Unavailable, rfc3339, trace_parent_problem
from codeq.store.store import Store
from codeq.webhooks.breaker import CircuitBreakers
from codeq.webhooks.client import Delivery, WebhookClient
from codeq.webhooks.guard import RefusedTarget, normal_host

log = structlog.get_logger("codeq.callbacks")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def breaker_host(url: str) -> str:
    """The host a circuit breaker is kept for: its one normal spelling, so that
    `127.1` and `127.0.0.1` (or a fullwidth name) share a breaker."""
    try:
        return normal_host(urlsplit(url).hostname or "")
    except (ValueError, RefusedTarget):  # the delivery is refused anyway
        return ""


def callback_body(callback: Callback) -> bytes:
    """The POST body of a result callback (codeQ's fields, times in RFC 3339)."""
    record = callback.record
    body = {
        "taskId": callback.task_id,
        "eventType": callback.command,
        "status": record.get("status"),
        "result": record.get("result"),
        "error": record.get("error"),
        "artifacts": record.get("artifacts") or [],
        "completedAt": rfc3339(int(record["completedAt"])),
    }
    if record.get("deadLettered"):
        body["deadLettered"] = True
    return orjson.dumps(body)


class CallbackDispatcher(Actor):
    """Claims due callbacks from every tenant's outbox (safe with several daemons:
    a claim hides a callback for its in-flight time) and delivers them, at most
    `concurrency` at once, each bounded by `timeout`.

    A failed attempt is retried after base * 2^(attempt-1) seconds, capped at
    `max_backoff`; after `max_attempts` the callback is abandoned: kept in the
    store for operators (GET /admin/callbacks), logged and counted. A host whose
    circuit breaker is open gets its callbacks deferred, not attempted.
    """

    name = "callback dispatcher"

    def __init__(
        self,
        store: Store,
        client: WebhookClient,
        breakers: CircuitBreakers,
        *,
        max_attempts: int = 5,
        base_backoff_seconds: float = 2.0,
        max_backoff_seconds: float = 60.0,
        timeout: float = 5.0,
        concurrency: int = 16,
        max_idle_ms: int = 1000,
    ) -> None:
        super().__init__()
        self.store = store
        self.client = client
        self.breakers = breakers
        self.max_attempts = max_attempts
        self.base_backoff = base_backoff_seconds
        self.max_backoff = max_backoff_seconds
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_idle_ms = max_idle_ms
        # a claimed callback not settled within this long is taken again by any daemon
        self.inflight_ms = int((2 * timeout + 10) * 1000)
        self.delivered = 0
        self.abandoned = 0
        self._busy = 0
        self._starved = False  # the last sweep stopped for want of a free slot
        self._planned = 0  # when the loop looks next (epoch ms)

    def callback_queued(self) -> None:
        """A callback was just queued by this daemon: deliver it now."""
        self.poke()

    def backoff_seconds(self, attempts: int) -> float:
        """The wait after the `attempts`-th failed attempt."""
        return float(min(self.base_backoff * 2 ** max(0, attempts - 1), self.max_backoff))

    async def run(self) -> None:
        pause = 0.1
        async with asyncio.TaskGroup() as deliveries:
            while True:
                self._planned = now_ms() + self.max_idle_ms
                try:
                    self._planned = await self._sweep(deliveries, self._planned)
                except Unavailable as exc:
                    pause = await pause_after_error(self, exc, pause)
                    continue
                pause = 0.1
                await self.sleep_until(self._planned)

    def _look_again_by(self, at_ms: int) -> None:
        """A callback was rescheduled for `at_ms`: make sure the loop looks by then."""
        if at_ms < self._planned:
            self._planned = at_ms
            self.poke()

    async def _sweep(self, deliveries: asyncio.TaskGroup, planned: int) -> int:
        """Claims what is due in every tenant, as far as free slots go; returns when
        to look again."""
        self._starved = False
        token = secrets.token_hex(8)
        for tag in await self.store.tenants():
            free = self.concurrency - self._busy
            if free <= 0:
                self._starved = True
                break
            try:
                callbacks, next_due = await self.store.claim_callbacks(
                    tag, now_ms=now_ms(), limit=free, inflight_ms=self.inflight_ms, token=token
                )
            except Unavailable:
                raise
            except Exception as exc:  # this tenant's outbox, not the others'
                tenant_failed(self, tag, exc)
                continue
            for callback in callbacks:
                self._busy += 1
                deliveries.create_task(self._deliver(tag, callback))
            if len(callbacks) == free:
                self._starved = True
            if next_due is not None:
                planned = min(planned, next_due)
        return planned

    async def _deliver(self, tag: str, callback: Callback) -> None:
        """Delivers one callback. Whatever goes wrong with this one callback stays
        with it: it is abandoned with the reason (GET /admin/callbacks shows it) and
        the dispatcher goes on with the others."""
        try:
            await self._attempt(tag, callback)
        except Exception as exc:  # a fault of this callback, never of the loop
            log.error(
                "result callback failed inside codeq; abandoned",
                callback=callback.id,
                task_id=callback.task_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            self.abandoned += 1
            metrics.CALLBACKS_ABANDONED.inc()
            await self._settle(tag, callback, "abandon", error=f"not deliverable: {exc}")
        finally:
            self._busy -= 1
            if self._starved:
                self.poke()

    async def _attempt(self, tag: str, callback: Callback) -> None:
        if callback.damaged:
            raise ValueError(callback.damaged)
        host = breaker_host(callback.url)
        wait = self.breakers.admit(host)
        if wait is not None:
            await self._settle(
                tag, callback, "defer", at=now_ms() + int(wait * 1000), error="circuit open"
            )
            return
        headers = {"X-CodeQ-Event": "result", "X-CodeQ-Callback": callback.id}
        # Checked at create; a value stored before that check is left out, not sent.
        if callback.trace_parent and not trace_parent_problem(callback.trace_parent):
            headers["traceparent"] = callback.trace_parent
        delivery = await self.client.post(
            callback.url,
            callback_body(callback),
            kind="task_result",
            command=callback.command,
            timeout=self.timeout,
            headers=headers,
        )
        await self._record(tag, host, callback, delivery)

    async def _record(self, tag: str, host: str, callback: Callback, delivery: Delivery) -> None:
        if delivery.ok:
            self.breakers.succeeded(host)
            self.delivered += 1
            await self._settle(tag, callback, "delivered")
            return
        if delivery.outcome == "refused":
            self.breakers.release(host)
        else:
            self.breakers.failed(host)
        if delivery.outcome == "refused" or callback.attempts >= self.max_attempts:
            self.abandoned += 1
            metrics.CALLBACKS_ABANDONED.inc()
            log.warning(
                "result callback abandoned",
                callback=callback.id,
                task_id=callback.task_id,
                url=callback.url,
                attempts=callback.attempts,
                error=delivery.error,
            )
            await self._settle(tag, callback, "abandon", error=delivery.error)
            return
        at = now_ms() + int(self.backoff_seconds(callback.attempts) * 1000)
        await self._settle(tag, callback, "retry", at=at, error=delivery.error)

    async def _settle(
        self, tag: str, callback: Callback, outcome: str, *, at: int = 0, error: str = ""
    ) -> None:
        """Records the outcome; shielded, so a stop cannot split it from the delivery.
        A store blip leaves the callback claimed: it is delivered again later."""
        try:
            await asyncio.shield(
                self.store.settle_callback(
                    tag, callback, outcome, now_ms=now_ms(), next_at_ms=at, error=error[:500]
                )
            )
        except Exception as exc:  # the store down, or a record it cannot settle
            # The callback stays claimed; it is taken again after its in-flight time.
            log.warning("callback outcome not recorded", callback=callback.id, error=str(exc))
            return
        if outcome in ("retry", "defer"):
            self._look_again_by(at)  # after the write, so the next look sees it
