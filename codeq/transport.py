"""The interface every transport implements, and how transports are found.

Transports register under the `codeq.transports` entry-point group (see
pyproject.toml); the daemon starts the ones its config lists. Adding a transport
is one module and one registration line: the core does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

from codeq.auth import Authenticates
from codeq.config import Config
from codeq.ratelimit import RateLimiter
from codeq.service import Service

ENTRY_POINT_GROUP = "codeq.transports"


@dataclass(frozen=True, slots=True)
class TransportContext:
    """What a transport gets: the service to call, the authenticator, the config,
    a readiness probe, the per-token rate limiter (None: no limits), and the metrics
    exposition (None: metrics are off)."""

    service: Service
    auth: Authenticates
    config: Config
    readiness: Callable[[], Awaitable[dict[str, Any]]]
    limiter: RateLimiter | None = None
    metrics: Callable[[], Awaitable[tuple[bytes, str]]] | None = None


class Transport(Protocol):
    """A way for clients to reach the service (HTTP, WebSocket, ...)."""

    name: str

    def __init__(self, context: TransportContext) -> None: ...

    async def start(self) -> list[str]:
        """Starts listening; returns the addresses it listens on."""

    async def stop_accepting(self) -> None:
        """Stops taking new connections; in-flight requests go on."""

    async def drain(self, timeout: float) -> None:
        """Lets in-flight requests finish (bounded by timeout), then closes."""


def load_transport(name: str) -> type[Transport]:
    """The transport class registered under `name`."""
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise LookupError(f"unknown transport {name!r}; installed: {', '.join(known) or 'none'}")
    cls: type[Transport] = next(iter(found)).load()
    return cls
