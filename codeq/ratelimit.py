"""Optional per-token rate limits (SPEC §6): one token bucket per bearer token and
scope, kept in the store so that every replica sees the same buckets.

A scope with no limit configured costs nothing; a limited one costs one store round
trip. When the store cannot answer, the request goes on (fail-open): a store blip
must not turn into refused traffic, and the store's own errors, if any, come from
the operation itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import structlog

from codeq import metrics
from codeq.domain import TooManyRequests, Unavailable

log = structlog.get_logger("codeq.ratelimit")


class Scope(StrEnum):
    """What a bucket limits; also the middle of its config keys (rateLimitCreate…)."""

    CREATE = "create"
    CLAIM = "claim"
    ADMIN_CLEANUP = "admin_cleanup"


# codeQ's (scope, operation) for each scope, in its 429 body and metric labels.
CODEQ_NAMES: Mapping[Scope, tuple[str, str]] = {
    Scope.CREATE: ("producer", "create_task"),
    Scope.CLAIM: ("worker", "claim"),
    Scope.ADMIN_CLEANUP: ("admin", "cleanup"),
}


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket's shape: refilled at `per_second`, holding at most `burst`."""

    per_second: float
    burst: int

    @classmethod
    def configured(cls, per_second: float, burst: int) -> Bucket | None:
        """The bucket a config asks for: None when per_second is 0 (off); a burst of
        0 means one second's worth (at least 1)."""
        if per_second <= 0:
            return None
        return cls(per_second, burst or max(1, math.ceil(per_second)))


class BucketStore(Protocol):
    """Where the buckets live (codeq.store.Store)."""

    async def take_tokens(
        self,
        token: str,
        scope: str,
        *,
        per_second: float,
        burst: int,
        cost: int = 1,
        now_ms: int,
    ) -> int | None: ...


class RateLimiter:
    """Checks and spends the buckets of bearer tokens, scope by scope."""

    def __init__(
        self,
        store: BucketStore,
        limits: Mapping[Scope, Bucket | None],
        *,
        warn_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._limits = {scope: bucket for scope, bucket in limits.items() if bucket is not None}
        self._warn_interval = warn_interval
        self._clock = clock
        self._quiet_until = -math.inf
        self._suppressed = 0

    def applies(self, scope: Scope) -> bool:
        """Whether the scope has a limit (else checks are free and always pass)."""
        return scope in self._limits

    async def check(self, token: str, scope: Scope, cost: int = 1) -> float | None:
        """Spends `cost` tokens of the token's bucket for the scope. None: go ahead
        (also when the scope is unlimited or the store fails); else the seconds to
        wait, with nothing spent."""
        bucket = self._limits.get(scope)
        if bucket is None:
            return None
        cost = min(cost, bucket.burst)  # a batch larger than the burst waits for a full bucket
        try:
            wait_ms = await self._store.take_tokens(
                token,
                scope.value,
                per_second=bucket.per_second,
                burst=bucket.burst,
                cost=cost,
                now_ms=time.time_ns() // 1_000_000,
            )
        except (Unavailable, TimeoutError) as exc:
            self._failed_open(scope, exc)
            return None
        return None if wait_ms is None else wait_ms / 1000

    async def enforce(self, token: str, scope: Scope, cost: int = 1) -> None:
        """Like check(), but a refusal raises TooManyRequests (codeQ's 429) and is
        counted in codeq_rate_limit_hits_total."""
        wait = await self.check(token, scope, cost)
        if wait is None:
            return
        codeq_scope, operation = CODEQ_NAMES[scope]
        metrics.RATE_LIMIT_HITS.labels(scope=codeq_scope, operation=operation).inc()
        raise TooManyRequests(
            "rate limit exceeded",
            retry_after=max(1, math.ceil(wait)),
            scope=codeq_scope,
            operation=operation,
        )

    def _failed_open(self, scope: Scope, exc: Exception) -> None:
        """Logs a store failure at most once per warn_interval, so an outage does not
        flood the log; the next warning says how many it stood for."""
        now = self._clock()
        if now < self._quiet_until:
            self._suppressed += 1
            return
        log.warning(
            "rate limit check failed; request let through",
            scope=scope.value,
            error=str(exc),
            suppressed=self._suppressed,
        )
        self._suppressed = 0
        self._quiet_until = now + self._warn_interval
