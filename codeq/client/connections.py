"""How the HTTP client reaches a daemon: where (a base URL, TCP or a Unix socket)
and over what (a pooled aiohttp session, or one plain connection per request).

- `PooledLink` keeps connections open (aiohttp): for workers, bulk creates and
  library use, where many requests follow each other or run at once.
- `DirectLink` opens one HTTP/1.1 connection per request on asyncio streams and
  never imports aiohttp (about 0.2 s of a command's start): for the CLI's
  one-shot commands.

Both raise `Unreachable` with a one-line reason when no answer could be had, and
both can give up a request whose answer has not begun when an event is set (a
worker's stop cutting its long-poll claim short).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode, urlsplit

T = TypeVar("T")

API_PREFIX = "/v1/codeq"
MAX_HEADER_LINES = 200


class Unreachable(Exception):
    """No answer from the daemon; the message says why in a few words.
    `not_listening`: nothing listens there (refused, or no socket file)."""

    def __init__(self, reason: str, *, not_listening: bool = False) -> None:
        super().__init__(reason)
        self.not_listening = not_listening


class GaveUp(Exception):
    """The request was dropped before its answer began, as asked (give_up was set)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a daemon listens: `http(s)://host:port[/prefix]` or `unix:///path`."""

    url: str  # as given, minus a trailing / or /v1/codeq (for messages)
    scheme: str  # http, https or unix
    host: str  # for Host:, "localhost" on a socket
    port: int
    prefix: str  # a path the daemon is served under (a reverse proxy's), or ""
    socket_path: str | None = None

    @classmethod
    def parse(cls, url: str) -> Target:
        """Parses a base URL; ValueError names what is wrong with it. The API's own
        /v1/codeq at the end is dropped (it is added to every request)."""
        text = url.strip().rstrip("/")
        if text.endswith(API_PREFIX):
            text = text[: -len(API_PREFIX)].rstrip("/")
        parts = urlsplit(text)
        if parts.scheme == "unix":
            path = parts.path if not parts.netloc else ""
            if not path.startswith("/"):
                raise ValueError(
                    f"a unix:// URL needs an absolute socket path, e.g. "
                    f"unix:///run/codeq/codeq.sock, got {url!r}"
                )
            return cls(text, "unix", "localhost", 0, "", socket_path=path)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"url must be http://host:port, https://… or unix:///path/to.sock, got {url!r}"
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"url has a bad port: {url!r}") from None
        return cls(text, parts.scheme, parts.hostname, port, parts.path)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443}.get(self.scheme)
        return host if self.port in (default, 0) else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """scheme://host:port, what a request URL starts with (http://localhost on a socket)."""
        if self.scheme == "unix":
            return "http://localhost"
        return f"{self.scheme}://{self.host_header}"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes


class Link(Protocol):
    """One way of sending requests to a daemon."""

    async def send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        data: bytes | None,
        timeout: float,
        give_up: asyncio.Event | None = None,
    ) -> Reply: ...

    async def close(self) -> None: ...


async def unless(give_up: asyncio.Event | None, aw: Awaitable[T]) -> T:
    """aw's result; raises GaveUp (after cancelling aw) when give_up is set first."""
    if give_up is None:
        return await aw
    work = asyncio.ensure_future(aw)
    stop = asyncio.create_task(give_up.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()
            await asyncio.wait({work})
    if work.cancelled():
        raise GaveUp
    return work.result()


def describe(exc: BaseException, target: Target) -> Unreachable:
    """An OS-level failure to reach `target` as a short reason."""
    if isinstance(exc, TimeoutError):
        return Unreachable("timed out")
    if isinstance(exc, ConnectionRefusedError):
        return Unreachable("connection refused", not_listening=True)
    if isinstance(exc, FileNotFoundError) and target.socket_path:
        return Unreachable(f"no socket at {target.socket_path}", not_listening=True)
    if isinstance(exc, PermissionError) and target.socket_path:
        return Unreachable(
            f"permission denied on {target.socket_path} (see unixSocketMode, unixSocketGroup)"
        )
    if isinstance(exc, socket.gaierror):
        return Unreachable(f"cannot resolve host {target.host!r}")
    if isinstance(exc, asyncio.IncompleteReadError | ConnectionResetError):
        return Unreachable("the connection closed before the answer was complete")
    if isinstance(exc, OSError) and exc.strerror:
        return Unreachable(exc.strerror.lower())
    return Unreachable(str(exc) or type(exc).__name__)


# ------------------------------------------------------------ pooled (aiohttp)


class PooledLink:
    """Requests over an aiohttp session (keep-alive pool); a Unix socket through
    aiohttp's UnixConnector."""

    def __init__(self, target: Target, headers: Mapping[str, str]) -> None:
        import aiohttp

        self.target = target
        connector = aiohttp.UnixConnector(path=target.socket_path) if target.socket_path else None
        self._session = aiohttp.ClientSession(headers=dict(headers), connector=connector)

    async def send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        data: bytes | None,
        timeout: float,
        give_up: asyncio.Event | None = None,
    ) -> Reply:
        import aiohttp

        url = self.target.origin + self.target.prefix + path
        try:
            resp = await unless(
                give_up,
                self._session.request(
                    method,
                    url,
                    data=data,
                    params=query,
                    headers=dict(headers),
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ),
            )
            async with resp:  # once the answer has begun, it is read to its end
                body = await resp.read()
                return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
        except aiohttp.ClientConnectorError as exc:  # the OS's reason is the useful part
            raise describe(getattr(exc, "os_error", None) or exc, self.target) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise describe(exc, self.target) from exc

    async def close(self) -> None:
        await self._session.close()


# ------------------------------------------------------------ direct (asyncio streams)


class DirectLink:
    """One HTTP/1.1 connection per request (`Connection: close`), on asyncio streams."""

    def __init__(self, target: Target, headers: Mapping[str, str]) -> None:
        self.target = target
        self.headers = dict(headers)
        self._tls: Any = None  # an ssl.SSLContext, made on first https use

    async def send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        data: bytes | None,
        timeout: float,
        give_up: asyncio.Event | None = None,
    ) -> Reply:
        target = f"{self.target.prefix}{path}" + (f"?{urlencode(query)}" if query else "")
        length = {"Content-Length": str(len(data or b""))}
        head = _request_head(
            method, target, self.target.host_header, {**self.headers, **headers, **length}
        )
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await unless(give_up, self._open())
                try:
                    writer.write(head + (data or b""))
                    await unless(give_up, writer.drain())
                    status_line = await unless(give_up, reader.readline())
                    return await _read_reply(reader, status_line, method)
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise describe(exc, self.target) from exc
        except ValueError as exc:  # a reply that is not HTTP/1.x, or too long a line
            raise Unreachable(f"not an HTTP answer ({exc})") from exc

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target.socket_path:
            return await asyncio.open_unix_connection(self.target.socket_path)
        if self.target.scheme == "https":
            if self._tls is None:
                import ssl

                self._tls = ssl.create_default_context()
            return await asyncio.open_connection(self.target.host, self.target.port, ssl=self._tls)
        return await asyncio.open_connection(self.target.host, self.target.port)

    async def close(self) -> None:
        return None


def _request_head(method: str, target: str, host: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise Unreachable(f"the {name} header has a line break (check the token)")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_reply(reader: asyncio.StreamReader, status_line: bytes, method: str) -> Reply:
    while True:
        version, _, rest = status_line.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not rest[:3].isdigit():
            raise ValueError(f"status line {status_line[:60]!r}")
        status = int(rest[:3])
        headers = await _read_headers(reader)
        if status >= 200:
            break
        status_line = await reader.readline()  # an interim 1xx answer: the real one follows
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return Reply(status, headers, body)


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        if line in (b"\r\n", b"\n"):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ValueError(f"more than {MAX_HEADER_LINES} header lines")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"x", 16)
        if size == 0:
            await _read_headers(reader)  # trailers, if any, then the blank line
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk
