"""Per-host circuit breakers for result callbacks.

A host that failed `threshold` deliveries in a row is open: its deliveries are
deferred (no attempt spent) for `cooldown` seconds. Then it is half-open: one
delivery goes through as a probe while the others keep waiting; the probe's
success closes the breaker, its failure opens it again. State is per daemon.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("codeq.webhooks")


@dataclass(slots=True)
class _Host:
    failures: int = 0
    opened_at: float | None = None  # set while open or half-open
    probing: bool = False


class CircuitBreakers:
    """The breakers of every host a daemon delivers to."""

    def __init__(
        self,
        threshold: int,
        cooldown_seconds: float,
        *,
        probe_wait_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown_seconds
        self.probe_wait = probe_wait_seconds
        self._clock = clock
        self._hosts: dict[str, _Host] = {}

    def state(self, host: str) -> str:
        """closed, open or half_open."""
        entry = self._hosts.get(host)
        if entry is None or entry.opened_at is None:
            return "closed"
        if self._clock() - entry.opened_at < self.cooldown:
            return "open"
        return "half_open"

    def admit(self, host: str) -> float | None:
        """None when a delivery to `host` may go now; else how many seconds to wait."""
        entry = self._hosts.get(host)
        if entry is None or entry.opened_at is None:
            return None
        waited = self._clock() - entry.opened_at
        if waited < self.cooldown:
            return self.cooldown - waited
        if entry.probing:
            return self.probe_wait
        entry.probing = True  # half-open: this delivery is the probe
        return None

    def release(self, host: str) -> None:
        """A delivery admitted as the probe ended without telling anything about the
        host (the URL guard refused it): the next delivery may probe."""
        entry = self._hosts.get(host)
        if entry is not None:
            entry.probing = False

    def succeeded(self, host: str) -> None:
        entry = self._hosts.pop(host, None)
        if entry is not None and entry.opened_at is not None:
            log.info("circuit breaker closed", host=host)

    def failed(self, host: str) -> None:
        entry = self._hosts.setdefault(host, _Host())
        entry.failures += 1
        if entry.probing or (entry.opened_at is None and entry.failures >= self.threshold):
            entry.opened_at = self._clock()
            entry.probing = False
            log.warning(
                "circuit breaker open", host=host, failures=entry.failures, cooldown=self.cooldown
            )
