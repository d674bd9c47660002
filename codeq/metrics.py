"""The daemon's Prometheus metrics, in one place, with codeQ's names and labels.

Metrics live in prometheus_client's default registry (one per process, like the
process and platform collectors it already holds); `exposition()` renders it for
`GET /metrics`.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

RATE_LIMIT_HITS = Counter(
    "codeq_rate_limit_hits_total",
    "Requests refused by a per-token rate limit, by codeQ's scope and operation.",
    ["scope", "operation"],
)


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
