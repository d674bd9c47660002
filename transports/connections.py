"""Connection bounds of the aiohttp transports: a new connection must send its first
request in time, and a transport holds at most so many connections.

aiohttp closes a keep-alive connection that sits idle between requests
(`keepalive_timeout`) and, from 3.14, one that never sends a request; it has no
bound on connections. So every connection's protocol is wrapped (`GuardedRunner`
hands the sites a wrapping factory): past the cap a new connection is closed at
once and the refusal logged once a minute; a connection whose first request has not
begun within the header timeout is closed, whatever the aiohttp version.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from codeq import metrics

log = structlog.get_logger("codeq.http")

# File descriptors kept free for what is not a client connection: the store's pool,
# the embedded store's socket, log and artifact files, webhook connections.
FD_RESERVE = 512
# How long the unread rest of a refused request's body is read and dropped before
# the connection closes (aiohttp's lingering close; its default is 10 s).
LINGER_SECONDS = 2.0
_REFUSAL_LOG_SECONDS = 60.0


def default_max_connections() -> int:
    """The cap when none is configured: the open-file limit less the reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, soft - FD_RESERVE)


class ConnectionGuard:
    """Counts a transport's connections, refuses those past `max_connections` and
    closes those that send no request within `header_timeout` seconds."""

    def __init__(self, name: str, *, max_connections: int, header_timeout: float) -> None:
        self.name = name
        self.max_connections = max_connections or default_max_connections()
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = 0
        self._waiting: dict[asyncio.BaseTransport, _GuardedProtocol] = {}
        self._refusal_logged_at = -_REFUSAL_LOG_SECONDS

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _GuardedProtocol(self, factory())

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection's first request has begun: its header deadline is met."""
        if transport is not None and (waiting := self._waiting.pop(transport, None)):
            waiting.started()

    def _admit(self, protocol: _GuardedProtocol, transport: asyncio.BaseTransport) -> bool:
        if self.open >= self.max_connections:
            self.refused += 1
            metrics.HTTP_CONNECTIONS_REFUSED.labels(self.name).inc()
            now = time.monotonic()
            if now - self._refusal_logged_at >= _REFUSAL_LOG_SECONDS:
                self._refusal_logged_at = now
                log.warning(
                    "connection limit reached: new connections are closed",
                    transport=self.name,
                    limit=self.max_connections,
                    refused_so_far=self.refused,
                )
            return False
        self.open += 1
        metrics.HTTP_CONNECTIONS_OPEN.labels(self.name).inc()
        self._waiting[transport] = protocol
        return True

    def _closed(self, transport: asyncio.BaseTransport) -> None:
        self.open -= 1
        metrics.HTTP_CONNECTIONS_OPEN.labels(self.name).dec()
        self._waiting.pop(transport, None)


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the guard's admission and
    first-request deadline; every event goes on to it unchanged."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard._admit(self, transport):
            transport.abort()  # type: ignore[attr-defined]
            return
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.header_timeout, self._too_slow)
        self._inner.connection_made(transport)

    def started(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:  # refused: aiohttp never saw it
            return
        self.started()
        self._guard._closed(self._transport)
        self._inner.connection_lost(exc)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose sites accept connections through a ConnectionGuard."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    @property
    def server(self) -> Any:
        inner = super().server
        return None if inner is None else self.guard.wrap(inner)
