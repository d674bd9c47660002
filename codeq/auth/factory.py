"""Builds the authenticator a config asks for: the dev token, static tokens or JWKS,
chosen separately for producers and workers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from codeq.auth.dev import dev_claims, load_or_create_dev_token
from codeq.auth.jwks import JwksProvider, KeySet
from codeq.auth.providers import Authenticator, AuthProvider, StaticProvider
from codeq.config import Config


class Auth:
    """The daemon's authenticator and the JWKS key sets behind it: fetched before the
    transports start, closed after they drain."""

    def __init__(
        self,
        authenticator: Authenticator,
        key_sets: Sequence[KeySet] = (),
        dev_token: str | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.key_sets = tuple(key_sets)
        self.dev_token = dev_token  # set in dev mode: the token that can do everything

    async def start(self) -> None:
        """One fetch per JWKS; an unreachable JWKS does not stop the start."""
        await asyncio.gather(*(keys.start() for keys in self.key_sets))

    async def aclose(self) -> None:
        for keys in self.key_sets:
            await keys.aclose()


def build_auth(config: Config) -> Auth:
    """Dev mode: one generated token (kept in the state directory) for everything.
    Otherwise each role gets its configured provider: jwks, or static tokens.
    Producers and workers on the same JWKS URL share its keys (one fetch)."""
    if config.dev_mode:
        token = load_or_create_dev_token(config.state_directory())
        dev = StaticProvider({token: dev_claims(config.worker_audience)})
        return Auth(_authenticator(config, dev, dev), dev_token=token)
    static = StaticProvider({t.token: dict(t.claims) for t in config.static_tokens})
    key_sets: dict[str, KeySet] = {}

    def jwks(url: str | None, issuer: str | None, audience: str | None) -> JwksProvider:
        assert url is not None  # load_config refuses jwks without its URL
        if url not in key_sets:
            key_sets[url] = KeySet(url, refetch_interval=config.jwks_refetch_interval_seconds)
        return JwksProvider(
            key_sets[url],
            issuer=issuer,
            audience=audience,
            clock_skew_seconds=config.allowed_clock_skew_seconds,
        )

    producer: AuthProvider = static
    worker: AuthProvider = static
    if config.producer_auth_provider == "jwks":
        producer = jwks(config.identity_jwks_url, config.identity_issuer, config.identity_audience)
    if config.worker_auth_provider == "jwks":
        worker = jwks(config.worker_jwks_url, config.worker_issuer, config.worker_audience)
    return Auth(_authenticator(config, producer, worker), list(key_sets.values()))


def _authenticator(config: Config, producer: AuthProvider, worker: AuthProvider) -> Authenticator:
    return Authenticator(
        producer,
        worker,
        worker_audience=config.worker_audience,
        allow_producer_as_worker=config.allow_producer_as_worker,
    )
