"""The notifier: tells worker subscriptions that a queue has work."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time

import orjson
import structlog

from codeq import metrics
from codeq.actors.base import Actor, tenant_failed
from codeq.domain import Unavailable, rfc3339
from codeq.store.store import Store
from codeq.webhooks.client import WebhookClient

log = structlog.get_logger("codeq.notifier")

CLAIM_PATH = "/v1/codeq/tasks/claim"


class Notifier(Actor):
    """Sends "work available" webhooks when a queue goes from empty to non-empty.

    Events come from this daemon's own store scripts (create, delayed task due,
    requeue, redrive, resume), relayed by the scheduler from the ready channel, so
    with several daemons each event is handled once, by the daemon that caused it.
    The store picks the subscriptions (delivery modes, minInterval gates shared by
    every daemon); posts run concurrently, at most `concurrency` at once, each
    bounded by `timeout`. Best effort: a failed notification is counted, not retried
    -- claiming stays the authoritative way to get work.
    """

    name = "notifier"

    def __init__(
        self,
        store: Store,
        client: WebhookClient,
        *,
        timeout: float = 2.0,
        concurrency: int = 16,
        hash_bucket_seconds: int = 60,
        inbox_size: int = 10_000,
    ) -> None:
        super().__init__()
        self.store = store
        self.client = client
        self.timeout = timeout
        self.hash_bucket_seconds = hash_bucket_seconds
        self.sent = 0
        self._slots = asyncio.Semaphore(concurrency)
        self._inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=inbox_size)
        self._queued: set[tuple[str, str]] = set()

    def queue_became_ready(self, tag: str, command: str) -> None:
        """A queue went from empty to non-empty. Never blocks; an event already waiting
        for the same queue absorbs this one."""
        event = (tag, command)
        if event in self._queued:
            return
        try:
            self._inbox.put_nowait(event)
        except asyncio.QueueFull:
            metrics.NOTIFICATIONS_DROPPED.inc()
            return
        self._queued.add(event)

    def hash_seed(self, command: str, now_ms: int) -> int:
        """The same number for one command within one time bucket: hash-mode
        subscriptions of a group take turns bucket by bucket, one command at a time."""
        bucket = now_ms // 1000 // self.hash_bucket_seconds
        digest = hashlib.sha256(f"{command}|{bucket}".encode()).digest()
        return int.from_bytes(digest[:4], "big")

    async def run(self) -> None:
        async with asyncio.TaskGroup() as posts:
            while True:
                tag, command = await self._inbox.get()
                self._queued.discard((tag, command))
                now = time.time_ns() // 1_000_000
                try:
                    depth, picks = await self.store.pick_subscribers(
                        tag, command, now_ms=now, seed=self.hash_seed(command, now)
                    )
                except Unavailable as exc:
                    log.warning("notification skipped: store unavailable", error=str(exc))
                    continue
                except Exception as exc:  # this tenant's subscriptions, not the others'
                    tenant_failed(self, tag, exc)
                    continue
                for subscription_id, url in picks:
                    await self._slots.acquire()
                    posts.create_task(self._notify(subscription_id, url, command, depth))

    async def _notify(self, subscription_id: str, url: str, command: str, depth: int) -> None:
        """Sends one notification; whatever goes wrong with it stays with it."""
        try:
            await self._post(subscription_id, url, command, depth)
        except Exception as exc:  # a fault of this subscription, never of the loop
            metrics.ACTOR_ITEM_FAILURES.labels(self.name).inc()
            log.error(
                "notification failed inside codeq",
                subscription=subscription_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._slots.release()

    async def _post(self, subscription_id: str, url: str, command: str, depth: int) -> None:
        body = orjson.dumps(
            {
                "eventType": command,
                "available": True,
                "queueDepth": depth,
                "claimUrl": CLAIM_PATH,
                "sentAt": rfc3339(time.time_ns() // 1_000_000),
                "notificationId": f"ntf-{secrets.token_hex(8)}",
            }
        )
        delivery = await self.client.post(
            url,
            body,
            kind="queue_ready",
            command=command,
            timeout=self.timeout,
            headers={"X-CodeQ-Event": "queue_ready", "X-CodeQ-Subscription": subscription_id},
        )
        self.sent += 1
        if not delivery.ok:
            log.info(
                "notification not delivered",
                subscription=subscription_id,
                outcome=delivery.outcome,
                error=delivery.error,
            )
