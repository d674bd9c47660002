"""The outbound URL guard: webhooks go to http(s) URLs on public addresses only.

Private, loopback, link-local (cloud metadata at 169.254.169.254 among them),
shared, reserved and multicast addresses are refused -- at registration for hosts
given as addresses or well-known local names, and at delivery for every address a
name resolves to (`GuardedResolver`, so the check is on the very addresses the
connection uses: no DNS rebinding between check and connect). `webhookAllowedHosts`
lets named hosts or addresses through (tests allow 127.0.0.1 and localhost).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

_LOCAL_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal"})
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedTarget(OSError):
    """A webhook target the guard does not let through."""


def _ip(host: str) -> _IP | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _public(ip: _IP) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _normal(host: str) -> str:
    ip = _ip(host)
    return str(ip) if ip is not None else host.rstrip(".").lower()


class UrlGuard:
    """Decides which webhook targets are allowed."""

    def __init__(self, allowed_hosts: Iterable[str] = ()) -> None:
        self.allowed = frozenset(_normal(h) for h in allowed_hosts)

    def check(self, url: str) -> None:
        """Raises RefusedTarget for a URL that is not http(s), or whose host is a
        non-public address or a local name, unless allowed."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("http", "https") or not host:
            raise RefusedTarget("webhook URLs must be http:// or https:// with a host")
        name = _normal(host)
        if name in self.allowed:
            return
        ip = _ip(host)
        if ip is not None and not _public(ip):
            raise RefusedTarget(
                f"webhook host {host} is a private, loopback or link-local address"
                " (allow it with webhookAllowedHosts)"
            )
        if name in _LOCAL_NAMES or name.endswith(".localhost"):
            raise RefusedTarget(
                f"webhook host {host} is a local name (allow it with webhookAllowedHosts)"
            )

    def check_addresses(self, host: str, addresses: Iterable[str]) -> None:
        """Raises RefusedTarget if `host` resolved to a non-public address that is not
        allowed (a host allowed by name may resolve anywhere)."""
        if _normal(host) in self.allowed:
            return
        for address in addresses:
            ip = _ip(address.split("%")[0])
            if ip is None or (not _public(ip) and str(ip) not in self.allowed):
                raise RefusedTarget(
                    f"webhook host {host} resolves to {address}, a private, loopback or"
                    " link-local address (allow it with webhookAllowedHosts)"
                )


class GuardedResolver(AbstractResolver):
    """aiohttp's threaded resolver, refusing what the guard refuses."""

    def __init__(self, guard: UrlGuard) -> None:
        self._guard = guard
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        self._guard.check_addresses(host, (r["host"] for r in results))
        return results

    async def close(self) -> None:
        await self._inner.close()


def refused_cause(exc: BaseException) -> RefusedTarget | None:
    """The guard's refusal behind an aiohttp connection error, if that is what it was."""
    seen: Any = exc
    while seen is not None:
        if isinstance(seen, RefusedTarget):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None
