"""The daemon's Prometheus metrics, in one place, with codeQ's names and labels.

Event metrics (counters, histograms) live in prometheus_client's default registry,
one per process, beside the process and platform collectors it already holds. The
queue gauges are read from the store at scrape time by each daemon's
`QueueCollector`, in a registry of its own. `exposition()` renders both for
`GET /metrics`. Labels stay bounded: commands, statuses, routes, actor and script
names -- never task ids, and tenants only when `metricsTenantLabel` is on.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from codeq.domain import QueueStats, Unavailable

# No `*_created` timestamp series beside every counter and histogram: they double the
# series count and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

TASK_CREATED = Counter(
    "codeq_task_created_total", "Tasks created (idempotent replays not counted).", ["command"]
)
TASK_CLAIMED = Counter("codeq_task_claimed_total", "Tasks leased to a worker.", ["command"])
TASK_COMPLETED = Counter(
    "codeq_task_completed_total",
    "Tasks that ended: COMPLETED or FAILED by a result, FAILED by dead-lettering after a"
    " nack, CANCELLED by their producer.",
    ["command", "status"],
)
TASK_LATENCY = Histogram(
    "codeq_task_processing_latency_seconds",
    "Time from a task's creation to its result or dead-lettering.",
    ["command", "status"],
    buckets=_LATENCY_BUCKETS,
)
LEASE_EXPIRED = Counter(
    "codeq_lease_expired_total", "Leases that expired without a heartbeat.", ["command"]
)
HTTP_REQUESTS = Counter(
    "codeq_http_requests_total", "HTTP requests served.", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "codeq_http_request_duration_seconds",
    "HTTP request latency in seconds (long-poll claims include their wait).",
    ["method", "route"],
    buckets=_FAST_BUCKETS,
)
ACTOR_RESTARTS = Counter(
    "codeq_actor_restarts_total", "Actors restarted by the supervisor after a crash.", ["actor"]
)
SCRAPE_STORE_READ = Histogram(
    "codeq_metrics_store_read_seconds",
    "Time a /metrics scrape spends reading the queue gauges from the store.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
HTTP_CONNECTIONS_OPEN = Gauge(
    "codeq_http_connections_open", "Client connections open, by transport.", ["transport"]
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "codeq_http_connections_refused_total",
    "Client connections closed at once because the transport's connection limit was reached.",
    ["transport"],
)
ACTOR_ITEM_FAILURES = Counter(
    "codeq_actor_item_failures_total",
    "Steps of an actor that failed for one tenant, callback or subscription of their own"
    " (the actor went on with the others).",
    ["actor"],
)
STORE_LATENCY = Histogram(
    "codeq_store_latency_seconds",
    "Round-trip time of store operations (Lua scripts), by script.",
    ["operation"],
    buckets=_FAST_BUCKETS,
)

STREAM_MESSAGES = Counter(
    "codeq_stream_messages_total",
    "WebSocket stream frames, by stream (worker, producer), direction (in, out) and frame type.",
    ["stream", "direction", "type"],
)
STREAM_CONNECTIONS = Gauge(
    "codeq_stream_connections",
    "Open WebSocket streams, by stream (worker, producer).",
    ["stream"],
    multiprocess_mode="livesum",  # under --workers N: the sum over live workers
)

RATE_LIMIT_HITS = Counter(
    "codeq_rate_limit_hits_total",
    "Requests refused by a per-token rate limit, by codeQ's scope and operation.",
    ["scope", "operation"],
)


# The children of the per-request metrics, looked up once per label set: labels() takes
# a lock and validates its arguments on every call. Label values are bounded (routes,
# methods, statuses, script names), so the caches are too.


@lru_cache(maxsize=1024)
def http_requests(method: str, route: str, status: int) -> Any:
    return HTTP_REQUESTS.labels(method, route, str(status))


@lru_cache(maxsize=1024)
def http_latency(method: str, route: str) -> Any:
    return HTTP_LATENCY.labels(method, route)


@lru_cache(maxsize=256)
def store_latency(operation: str) -> Any:
    return STORE_LATENCY.labels(operation)


# ---------------------------------------------------------------- queue gauges

_QUEUES = ("ready", "delayed", "in_progress", "dlq")


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    """What one scrape read from the store: each queue's stats and each command's live
    subscriptions, with the tenant's name when metricsTenantLabel is on."""

    queues: Sequence[tuple[str | None, QueueStats]] = ()
    subscriptions: Sequence[tuple[str | None, str, int]] = ()


class QueueCollector(Collector):
    """The queue gauges of every tenant, read from the store when scraped.

    prometheus_client collects synchronously, so `refresh()` (awaited by the
    /metrics handler, bounded by a timeout) reads the store first and `collect()`
    renders what it read. A store that does not answer in time gives
    codeq_store_up 0 and no queue samples, rather than stale ones.
    """

    def __init__(
        self, read: Callable[[], Awaitable[StoreSnapshot]], *, timeout: float = 1.0
    ) -> None:
        self._read = read
        self._timeout = timeout
        self._snapshot = StoreSnapshot()
        self._up = False
        self._read_at = 0.0

    async def refresh(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                self._snapshot = await self._read()
        except (Unavailable, TimeoutError):
            self._snapshot, self._up = StoreSnapshot(), False
        else:
            self._up, self._read_at = True, time.time()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("codeq_store_up", "1 when the store answered the last scrape.")
        up.add_metric([], 1.0 if self._up else 0.0)
        yield up
        tenant = any(t is not None for t, _ in self._snapshot.queues)
        labels = ["tenant"] if tenant else []
        depth = GaugeMetricFamily(
            "codeq_queue_depth",
            "Tasks per queue: ready, delayed, in_progress (leased), dlq.",
            labels=[*labels, "command", "queue"],
        )
        dlq = GaugeMetricFamily(
            "codeq_dlq_depth", "Dead-lettered tasks.", labels=[*labels, "command"]
        )
        age = GaugeMetricFamily(
            "codeq_queue_oldest_ready_age_seconds",
            "How long the longest-waiting ready task has waited (0 when none is ready).",
            labels=[*labels, "command"],
        )
        paused = GaugeMetricFamily(
            "codeq_queue_paused",
            "1 when claims of the command are paused.",
            labels=[*labels, "command"],
        )
        sums: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0] * 6)
        for name, stats in self._snapshot.queues:
            key: tuple[str, ...] = (name or "", stats.command) if tenant else (stats.command,)
            row = sums[key]
            for i, count in enumerate((stats.ready, stats.delayed, stats.in_progress, stats.dlq)):
                row[i] += count
            if stats.oldest_ready_ms:
                row[4] = max(row[4], self._read_at - stats.oldest_ready_ms / 1000)
            row[5] = max(row[5], 1.0 if stats.paused else 0.0)
        for group, row in sorted(sums.items()):
            for queue, value in zip(_QUEUES, row, strict=False):
                depth.add_metric([*group, queue], value)
            dlq.add_metric(list(group), row[3])
            age.add_metric(list(group), max(0.0, row[4]))
            paused.add_metric(list(group), row[5])
        yield from (depth, dlq, age, paused)
        yield self._subscriptions(labels)

    def _subscriptions(self, labels: list[str]) -> Metric:
        active = GaugeMetricFamily(
            "codeq_subscriptions_active",
            "Live worker subscriptions, by command ('*' for subscriptions to every command).",
            labels=[*labels, "command"],
        )
        sums: dict[tuple[str, ...], int] = defaultdict(int)
        for tenant, command, count in self._snapshot.subscriptions:
            sums[(tenant or "", command) if labels else (command,)] += count
        for group, count in sorted(sums.items()):
            active.add_metric(list(group), count)
        return active


# Set by `codeq serve --workers N` for its workers: prometheus_client then keeps every
# counter, histogram and gauge in per-process files there, and any worker's /metrics
# sums all of them (multiprocess mode), so a scrape sees the whole set.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def exposition(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format (the whole set of workers' under
    --workers N), then a daemon's own registry when given; and the content type."""
    if os.environ.get(MULTIPROCESS_DIR_ENV):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        body = generate_latest(combined)
    else:
        body = generate_latest(REGISTRY)
    if registry is not None:
        body += generate_latest(registry)
    return body, CONTENT_TYPE_LATEST


WEBHOOK_DELIVERIES = Counter(
    "codeq_webhook_deliveries_total",
    "Webhook delivery attempts, by kind (codeQ's task_result, queue_ready), command and"
    " outcome (success, failure, timeout, refused).",
    ["kind", "command", "outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "codeq_webhook_latency_seconds",
    "Webhook HTTP request latency in seconds, by kind and outcome.",
    ["kind", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CALLBACKS_ABANDONED = Counter(
    "codeq_webhook_callbacks_abandoned_total",
    "Result callbacks given up on after their last attempt (or refused by the URL guard).",
)
NOTIFICATIONS_DROPPED = Counter(
    "codeq_notifications_dropped_total",
    "Work-available events dropped because the notifier's inbox was full.",
)

SCHEDULE_FIRES = Counter(
    "codeq_schedule_fires_total",
    "Tasks made by recurring schedules: on_time (within the misfire grace), catch_up"
    " (misfire policy run_once), run (run now).",
    ["kind"],
)
SCHEDULE_MISFIRES = Counter(
    "codeq_schedule_misfires_total",
    "Fire times of recurring schedules passed over without a task (the daemons were down"
    " or late past the misfire grace), by misfire policy.",
    ["policy"],
)
SCHEDULE_LATENESS = Histogram(
    "codeq_schedule_lateness_seconds",
    "Time from a schedule's fire time to the fire that made or skipped its task.",
    buckets=(*_FAST_BUCKETS, 30, 60, 300, 3600),
)
