"""The outbound URL guard: webhooks go to http(s) URLs on public addresses only.

Private, loopback, link-local (cloud metadata at 169.254.169.254 among them),
shared, reserved and multicast addresses are refused -- at registration for hosts
given as addresses or well-known local names, and at delivery for every address a
name resolves to (`GuardedResolver`, so the check is on the very addresses the
connection uses: no DNS rebinding between check and connect). `webhookAllowedHosts`
lets named hosts or addresses through (tests allow 127.0.0.1 and localhost).

A host has many spellings -- fullwidth digits and ideographic full stops (IDNA
maps them to ASCII), `127.1`, `2130706433`, `0x7f000001`, `0177.0.0.1` (the
C resolver and browsers read them all as 127.0.0.1), `[::ffff:127.0.0.1]` --
so every host goes through one function, `normal_host`, before it is checked or
compared, and delivery connects to that normal spelling (`UrlGuard.target`):
what was checked is what is reached.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

import idna
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

_LOCAL_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal"})
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_ALLOW_HINT = " (allow it with webhookAllowedHosts)"

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_LABEL_RE = re.compile(r"[a-z0-9_-]+")
# An IPv4 part as WHATWG URL parsing and inet_aton read it: hex, octal or decimal.
_IPV4_PART_RE = re.compile(r"0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*")
_ZONE_RE = re.compile(r"[a-z0-9._~-]*")


class RefusedTarget(OSError):
    """A webhook target the guard does not let through."""


# ------------------------------------------------------------ one spelling per host


def normal_host(host: str) -> str:
    """The one spelling of a host that is checked, compared and connected to: IDNA
    (UTS-46) applied, lower case, no trailing dot, an IPv4 address as a dotted quad
    whatever its spelling, an IPv6 address compressed without brackets or zone (an
    IPv4-mapped one as its IPv4 address). Raises RefusedTarget for what is neither
    a host name nor an address."""
    spelled = host
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except UnicodeError:  # idna.IDNAError and its kin
            raise RefusedTarget(f"webhook host {spelled} is not a valid host name") from None
    host = host.lower()
    if ":" in host:
        return str(_ipv6(host, spelled))
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    labels = host.split(".")
    if _IPV4_PART_RE.fullmatch(labels[-1]) or labels[-1].isdigit():
        return str(_ipv4(labels, spelled))
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise RefusedTarget(f"webhook host {spelled} is not a valid host name")
    return host


def _ipv4(parts: list[str], spelled: str) -> ipaddress.IPv4Address:
    """A host ending in a number is an IPv4 address (WHATWG URL's IPv4 parser, which
    reads what inet_aton reads: 1 to 4 parts, each hex, octal or decimal, the last
    filling the bytes left), or not a host at all."""
    numbers = [_ipv4_part(part) for part in parts]
    if len(parts) > 4 or None in numbers:
        raise RefusedTarget(f"webhook host {spelled} is not a valid IPv4 address")
    *leading, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in leading) or last >= 256 ** (4 - len(leading)):
        raise RefusedTarget(f"webhook host {spelled} is not a valid IPv4 address")
    value = last
    for i, n in enumerate(leading):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _ipv4_part(part: str) -> int | None:
    if not _IPV4_PART_RE.fullmatch(part):
        return None
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if part.startswith("0") and len(part) > 1:
        return int(part[1:], 8)
    return int(part)


def _ipv6(host: str, spelled: str) -> _IP:
    address, _, zone = host.strip("[]").replace("%25", "%", 1).partition("%")
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        raise RefusedTarget(f"webhook host {spelled} is not a valid IPv6 address") from None
    if _ZONE_RE.fullmatch(zone) is None:
        raise RefusedTarget(f"webhook host {spelled} has an invalid IPv6 zone")
    return ip.ipv4_mapped or ip


def _address(text: str) -> _IP | None:
    """An address in normal form (see normal_host), None for a name."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# ------------------------------------------------------------ public or not


def _kind(ip: _IP) -> str | None:
    """What keeps an address from being public ("a loopback address"), or None."""
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL:
        return "a local-use NAT64 address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved address"
    return None


def _embedded(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries to a translator or tunnel (NAT64,
    IPv4-compatible, 6to4, Teredo): a connection may end up at any of them."""
    carried = []
    if ip in _NAT64 or int(ip) >> 32 == 0:
        carried.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        carried.append(ip.sixtofour)
    if ip.teredo is not None:
        carried.extend(ip.teredo)
    return carried


class UrlGuard:
    """Decides which webhook targets are allowed."""

    def __init__(self, allowed_hosts: Iterable[str] = ()) -> None:
        try:
            self.allowed = frozenset(normal_host(h) for h in allowed_hosts)
        except RefusedTarget as exc:
            raise ValueError(f"webhookAllowedHosts: {exc}") from None

    def _problem(self, ip: _IP) -> str | None:
        """Why an address (in normal form) is refused, or None if it may be reached."""
        if str(ip) in self.allowed:
            return None
        kind = _kind(ip)
        if kind is not None or isinstance(ip, ipaddress.IPv4Address):
            return kind
        for carried in _embedded(ip):
            inner = self._problem(carried)
            if inner is not None:
                return f"an IPv6 address carrying {carried}, {inner}"
        return None

    def target(self, url: str) -> URL:
        """The URL a webhook is delivered to: `url` with its host in normal form.
        Raises RefusedTarget for a malformed URL, one that is not http(s), or one
        whose host is a non-public address or a local name, unless allowed."""
        try:
            parsed = URL(url)
        except ValueError as exc:
            raise RefusedTarget(f"webhook URL is malformed: {exc}") from None
        spelled = parsed.raw_host
        if parsed.scheme not in ("http", "https") or not spelled:
            raise RefusedTarget("webhook URLs must be http:// or https:// with a host")
        host = normal_host(spelled)
        ip = _address(host)
        if ip is not None:
            problem = self._problem(ip)
            if problem is not None:
                problem = problem if host == spelled else f"{host}, {problem}"
                raise RefusedTarget(f"webhook host {spelled} is {problem}{_ALLOW_HINT}")
        elif host not in self.allowed and (host in _LOCAL_NAMES or host.endswith(".localhost")):
            raise RefusedTarget(f"webhook host {spelled} is a local name{_ALLOW_HINT}")
        return parsed if host == spelled else parsed.with_host(host)

    def check(self, url: str) -> None:
        """Raises RefusedTarget for a URL `target` refuses (registration)."""
        self.target(url)

    def check_addresses(self, host: str, addresses: Iterable[str]) -> None:
        """Raises RefusedTarget if `host` resolved to a non-public address that is not
        allowed (a host allowed by name may resolve anywhere)."""
        try:
            if normal_host(host) in self.allowed:
                return
        except RefusedTarget:
            pass  # a name the resolver took: its addresses decide
        for address in addresses:
            ip = _address(address.split("%")[0])
            problem = "not an address" if ip is None else self._problem(ip)
            if problem is not None:
                raise RefusedTarget(
                    f"webhook host {host} resolves to {address}, {problem}{_ALLOW_HINT}"
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
