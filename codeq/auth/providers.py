"""Auth providers (static now; JWKS plugs into the same interface) and the
authenticator the transports call."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from codeq.auth.claims import as_worker, principal_from_claims
from codeq.domain import Principal, Unauthenticated

PRINCIPAL_CACHE_SIZE = 10_000


class AuthProvider(Protocol):
    """Verifies a bearer token and returns its claims, or raises Unauthenticated."""

    async def verify(self, token: str) -> Mapping[str, Any]: ...


class StaticProvider:
    """Configured tokens mapped to claims, for development and tests."""

    def __init__(self, tokens: Mapping[str, Mapping[str, Any]]) -> None:
        # Keyed by digest so a lookup does not compare secrets byte by byte.
        self._claims = {_digest(t): dict(c) for t, c in tokens.items()}

    async def verify(self, token: str) -> Mapping[str, Any]:
        claims = self._claims.get(_digest(token))
        if claims is None:
            raise Unauthenticated("invalid token")
        return claims


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    """Turns the bearer token of a request into a Principal, producer or worker."""

    def __init__(
        self,
        producer: AuthProvider,
        worker: AuthProvider,
        *,
        worker_audience: str = "codeq-worker",
        allow_producer_as_worker: bool = False,
    ) -> None:
        self._producer = producer
        self._worker = worker
        self._principals: dict[str, tuple[Mapping[str, Any], Principal]] = {}
        self._audience = worker_audience
        self._producer_as_worker = allow_producer_as_worker

    async def producer(self, token: str | None) -> Principal:
        token = _present(token)
        return self._principal(token, await self._producer.verify(token))

    async def worker(self, token: str | None) -> Principal:
        token = _present(token)
        try:
            claims = await self._worker.verify(token)
        except Unauthenticated:
            if not self._producer_as_worker:
                raise
            return as_worker(await self.producer(token))
        who = self._principal(token, claims)
        if not who.worker:
            if self._producer_as_worker:
                return as_worker(who)
            raise Unauthenticated(f"not a worker token: aud must include {self._audience!r}")
        return who

    async def anyone(self, token: str | None) -> Principal:
        """A producer or a worker, whichever the token is."""
        try:
            return await self.producer(token)
        except Unauthenticated:
            return await self.worker(token)

    def _principal(self, token: str, claims: Mapping[str, Any]) -> Principal:
        """The Principal of verified claims, remembered per token while the provider
        keeps answering with the same claims object (static tokens, the JWKS
        verified-token cache), so the hot path does not rebuild it per request."""
        known = self._principals.get(token)
        if known is not None and known[0] is claims:
            return known[1]
        who = principal_from_claims(claims, worker_audience=self._audience)
        self._principals[token] = (claims, who)
        if len(self._principals) > PRINCIPAL_CACHE_SIZE:
            self._principals.pop(next(iter(self._principals)))
        return who


class Authenticates(Protocol):
    """What a transport calls to turn a request's bearer token into a Principal."""

    async def producer(self, token: str | None) -> Principal: ...

    async def worker(self, token: str | None) -> Principal: ...

    async def anyone(self, token: str | None) -> Principal: ...


class ReloadableAuthenticator:
    """The authenticator the transports hold: it delegates to the current one, so a
    reload (SIGHUP) swaps in new auth settings with one assignment, while requests
    and connections go on."""

    def __init__(self, current: Authenticator) -> None:
        self.current = current

    async def producer(self, token: str | None) -> Principal:
        return await self.current.producer(token)

    async def worker(self, token: str | None) -> Principal:
        return await self.current.worker(token)

    async def anyone(self, token: str | None) -> Principal:
        return await self.current.anyone(token)


def _present(token: str | None) -> str:
    if not token:
        raise Unauthenticated("missing bearer token")
    return token
