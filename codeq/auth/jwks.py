"""The `jwks` auth provider: JWTs signed with RS256 or ES256, verified against the
public keys an issuer publishes as a JWKS (an https:// or http:// URL, or a
file:// path for a local key set such as `codeq token` writes).

Keys are fetched lazily and cached; a token naming a key we do not have causes a
refetch, at most once per refetch interval, so forged key ids cannot make us hammer
the issuer. A token whose signature verified is remembered (by its SHA-256, in a
bounded LRU) so the hot path does not verify a signature per request; its time,
issuer and audience claims are still checked on every request, which is cheap. A
key removed from the JWKS therefore stops new tokens at once, but not tokens
already remembered: they stay valid until their exp.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import aiohttp
import orjson
import structlog
from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from codeq.domain import Unauthenticated

log = structlog.get_logger("codeq.auth.jwks")

# The accepted algorithms and the key type (and curve) each needs. Every other
# algorithm is refused before a key is looked at: "none", and HS256, whose
# "secret" an attacker could take from the issuer's public key.
ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
}
MAX_JWKS_BYTES = 1_048_576
FETCH_TIMEOUT_SECONDS = 5.0
# Keys older than this are refetched when a token not seen before arrives, so a key
# the issuer withdrew stops verifying new tokens within this long.
KEYS_MAX_AGE_SECONDS = 300.0
VERIFIED_CACHE_SIZE = 10_000
# An empty signature is let through to the algorithm check, which names "none".
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class _FetchFailed(Exception):
    """The JWKS could not be read or holds no usable key."""


class KeySet:
    """The signing keys at a JWKS URL, and the tokens they verified.

    Keys are fetched on first use (or at start) and refetched when a token names an
    unknown key, or when a new token arrives and they are older than `max_age`, at
    most once per `refetch_interval`; concurrent callers share one fetch. If a
    refetch fails the keys already known stay in use. Owns its HTTP session: close
    with aclose().
    """

    def __init__(
        self,
        url: str,
        *,
        refetch_interval: float = 30,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        max_age: float = KEYS_MAX_AGE_SECONDS,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        self.url = url
        self._max_age = max_age
        self._fetched_at = -math.inf  # when the keys in use were fetched
        self.fetches = 0  # finished attempts, successful or not
        self.signature_checks = 0  # a token seen for the first time costs one (per key tried)
        self._verified: OrderedDict[bytes, Mapping[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._interval = refetch_interval
        self._timeout = timeout
        self._keys: dict[str | None, list[jwk.JWK]] | None = None  # kid -> keys
        self._error = "not fetched yet"
        self._last_attempt = -math.inf
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Tries one fetch; an unreachable JWKS is logged, not fatal."""
        async with self._lock:
            await self._refresh()
        if self._keys is None:
            log.warning(
                "JWKS unavailable at start; its tokens get 401 until it can be fetched",
                url=self.url,
                error=self._error,
            )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def claims_of(self, token: str) -> Mapping[str, Any]:
        """The claims of a compact JWS signed (RS256 or ES256) by one of our keys;
        raises Unauthenticated otherwise. Nothing but the signature is checked here."""
        digest = _digest(token)
        claims = self._verified.get(digest)
        if claims is not None:
            self._verified.move_to_end(digest)
            return claims
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise Unauthenticated(
                f"token algorithm {alg!r} is not accepted (only {', '.join(ALGORITHMS)})"
            )
        if "crit" in header:
            raise Unauthenticated("token has critical header parameters (crit); not supported")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("token header 'kid' must be a string")
        payload = self._verified_payload(token, alg, await self.candidates(kid))
        claims = MappingProxyType(_claims(payload))
        self._verified[digest] = claims
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return claims

    def forget(self, token: str) -> None:
        """Drops a remembered token (one that expired)."""
        self._verified.pop(_digest(token), None)

    def _verified_payload(self, token: str, alg: str, keys: list[jwk.JWK]) -> bytes:
        kty, crv = ALGORITHMS[alg]
        usable = [
            key
            for key in keys
            if key.get("kty") == kty
            and (crv is None or key.get("crv") == crv)
            and key.get("alg") in (None, alg)
        ]
        if not usable:
            raise Unauthenticated(f"no {alg} key in the JWKS for this token's kid")
        signed = jws.JWS()
        signed.allowed_algs = [alg]
        try:
            signed.deserialize(token)
        except JWException:
            raise Unauthenticated("malformed token") from None
        for key in usable:
            self.signature_checks += 1
            try:
                signed.verify(key, alg=alg)
            except JWException:
                continue
            payload: bytes = signed.payload
            return payload
        raise Unauthenticated("invalid token signature")

    async def candidates(self, kid: str | None) -> list[jwk.JWK]:
        """The keys a token with this `kid` may be signed with (all keys when it has
        none); raises Unauthenticated when there are none, even after a refetch."""
        found = self._lookup(kid)
        if found and time.monotonic() - self._fetched_at < self._max_age:
            return found
        seen = self.fetches
        if self._lock.locked() or self._due():
            async with self._lock:
                # Whoever held the lock may have fetched already: share that fetch.
                if self.fetches == seen and self._due():
                    await self._refresh()
            found = self._lookup(kid)
        if found:
            return found
        if self._keys is None:
            raise Unauthenticated(f"JWKS unavailable: {self._error}")
        raise Unauthenticated(f"unknown signing key: kid {kid!r} is not in the JWKS")

    def _lookup(self, kid: str | None) -> list[jwk.JWK]:
        if self._keys is None:
            return []
        if kid is None:
            return [key for keys in self._keys.values() for key in keys]
        return self._keys.get(kid, [])

    def _due(self) -> bool:
        return time.monotonic() - self._last_attempt >= self._interval

    async def _refresh(self) -> None:
        self._last_attempt = time.monotonic()
        try:
            self._keys = _index(await self._fetch())
            self._fetched_at = time.monotonic()
        except _FetchFailed as exc:
            self._error = str(exc)
            log.warning("JWKS fetch failed", url=self.url, error=self._error)
        else:
            log.info("JWKS fetched", url=self.url, keys=sum(map(len, self._keys.values())))
        finally:
            # Counted when done: a caller that saw the count before waiting for the
            # lock knows from a change that a fetch finished meanwhile.
            self.fetches += 1

    async def _fetch(self) -> bytes:
        parts = urlsplit(self.url)
        try:
            if parts.scheme == "file":
                return await asyncio.to_thread(_read_file, Path(url2pathname(parts.path)))
            return await self._download()
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            raise _FetchFailed(f"cannot fetch {self.url}: {_describe(exc)}") from None

    async def _download(self) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        async with self._session.get(self.url) as resp:
            if resp.status != 200:
                raise _FetchFailed(f"{self.url} answered HTTP {resp.status}")
            body = await resp.content.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise _FetchFailed(f"{self.url} is larger than {MAX_JWKS_BYTES} bytes")
        return body


def _read_file(path: Path) -> bytes:
    with path.open("rb") as f:
        body = f.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise _FetchFailed(f"{path} is larger than {MAX_JWKS_BYTES} bytes")
    return body


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _index(body: bytes) -> dict[str | None, list[jwk.JWK]]:
    """The usable signing keys of a JWKS document, by kid. Keys we cannot use
    (other types, encryption keys, malformed entries) are skipped."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _FetchFailed("the JWKS is not valid JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise _FetchFailed('the JWKS has no "keys" list')
    keys: dict[str | None, list[jwk.JWK]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if not any(entry.get("kty") == kty for kty, _ in ALGORITHMS.values()):
            continue
        try:
            key = jwk.JWK(**entry)
        except (JWException, ValueError, TypeError) as exc:
            log.warning("JWKS key skipped", kid=entry.get("kid"), error=_describe(exc))
            continue
        kid = entry.get("kid")
        keys.setdefault(kid if isinstance(kid, str) else None, []).append(key)
    if not keys:
        raise _FetchFailed("the JWKS holds no RSA or EC signing key")
    return keys


class JwksProvider:
    """Verifies JWTs (RS256, ES256) against a JWKS, then checks exp, nbf, iat (with
    the clock skew), and iss and aud when configured. An AuthProvider. Providers
    with the same JWKS URL (producers and workers, say) share one KeySet, so a
    token's signature is checked once whichever of them sees it first."""

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        clock_skew_seconds: float = 60,
    ) -> None:
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self._skew = clock_skew_seconds

    async def verify(self, token: str) -> Mapping[str, Any]:
        claims = await self.keys.claims_of(token)
        now = time.time()
        exp = _numeric_date(claims, "exp")
        if exp is None:
            raise Unauthenticated("token has no expiry (exp)")
        if now > exp + self._skew:
            self.keys.forget(token)  # it will never be valid again
            raise Unauthenticated("token expired (exp)")
        self._check(claims, now)
        return claims

    def _check(self, claims: Mapping[str, Any], now: float) -> None:
        """nbf and iat (with the skew), then iss and aud when configured."""
        nbf = _numeric_date(claims, "nbf")
        if nbf is not None and nbf > now + self._skew:
            raise Unauthenticated("token not valid yet (nbf)")
        iat = _numeric_date(claims, "iat")
        if iat is not None and iat > now + self._skew:
            raise Unauthenticated("token issued in the future (iat)")
        if self._issuer is not None and claims.get("iss") != self._issuer:
            raise Unauthenticated(
                f"token issuer (iss) {claims.get('iss')!r} is not {self._issuer!r}"
            )
        if self._audience is not None and self._audience not in _audiences(claims.get("aud")):
            raise Unauthenticated(
                f"token audience (aud) {claims.get('aud')!r} does not include {self._audience!r}"
            )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS (the only JWT form accepted)."""
    if not _COMPACT_JWS.fullmatch(token):
        raise Unauthenticated("malformed token: not a signed JWT (header.payload.signature)")
    try:
        header = orjson.loads(_b64decode(token.partition(".")[0]))
    except (binascii.Error, ValueError):
        raise Unauthenticated("malformed token header") from None
    if not isinstance(header, dict):
        raise Unauthenticated("malformed token header")
    return header


def _claims(payload: bytes) -> dict[str, Any]:
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise Unauthenticated("token payload is not JSON") from None
    if not isinstance(claims, dict):
        raise Unauthenticated("token payload is not a JSON object")
    return claims


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(f"token claim {name!r} must be a number of seconds (NumericDate)")
    return float(value)


def _audiences(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()
