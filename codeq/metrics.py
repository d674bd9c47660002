"""The daemon's Prometheus metrics, in one place, with codeQ's names and labels.

Metrics live in prometheus_client's default registry (one per process, like the
process and platform collectors it already holds); `exposition()` renders it for
`GET /metrics`.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

RATE_LIMIT_HITS = Counter(
    "codeq_rate_limit_hits_total",
    "Requests refused by a per-token rate limit, by codeQ's scope and operation.",
    ["scope", "operation"],
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


WEBHOOK_DELIVERIES = Counter(
    "codeq_webhook_deliveries_total",
    "Webhook delivery attempts, by kind (queue_ready, result) and outcome"
    " (success, failure, timeout, refused).",
    ["kind", "outcome"],
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
SUBSCRIPTIONS_ACTIVE = Gauge(
    "codeq_subscriptions_active",
    "Live worker subscriptions, by command ('*' for subscriptions to every command).",
    ["command"],
)
NOTIFICATIONS_DROPPED = Counter(
    "codeq_notifications_dropped_total",
    "Work-available events dropped because the notifier's inbox was full.",
)
