"""JWKS auth: RS256/ES256 tokens minted here, verified by daemons against a real JWKS
server on loopback (or a file:// JWKS) — signatures, algorithms, time, audience and
issuer checks, key refetch and rotation, an unreachable JWKS, the verified-token cache."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import ALL_SCOPES, WORKER_AUD, LoopbackServer, RunningDaemon, wait_for
from jwcrypto import jwk, jwt

from codeq.auth.jwks import JwksProvider, KeySet
from codeq.domain import Unauthenticated

ISSUER = "https://identity.test"
WORKER_ISSUER = "https://workers.test"
API_AUD = "codeq-api"
StartDaemon = Callable[..., Awaitable[RunningDaemon]]


class Keys:
    """The test's identity provider: an EC P-256 key, an RSA key, and keys the JWKS
    does not publish (yet)."""

    def __init__(self) -> None:
        self.ec = jwk.JWK.generate(kty="EC", crv="P-256", kid="ec-1")
        self.rsa = jwk.JWK.generate(kty="RSA", size=2048, kid="rsa-1")
        self.unpublished = jwk.JWK.generate(kty="EC", crv="P-256", kid="ec-2")


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def jwks_document(*published: jwk.JWK) -> dict[str, Any]:
    return {"keys": [k.export_public(as_dict=True) for k in published]}


def sign(
    claims: dict[str, Any], key: jwk.JWK, alg: str | None = None, kid: str | None = None
) -> str:
    alg = alg or ("RS256" if key.get("kty") == "RSA" else "ES256")
    token = jwt.JWT(header={"alg": alg, "kid": kid or key.get("kid")}, claims=claims)
    token.make_signed_token(key)
    return str(token.serialize())


def claims(kind: str = "producer", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iat": now, "nbf": now, "exp": now + 600, "tenantId": "acme"}
    if kind == "worker":
        base |= {
            "iss": WORKER_ISSUER,
            "aud": [WORKER_AUD],
            "sub": "worker-1",
            "scope": ALL_SCOPES,
            "eventTypes": ["*"],
        }
    else:
        base |= {"iss": ISSUER, "aud": API_AUD, "sub": "svc-a"}
    return base | overrides


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class JwksServer(LoopbackServer):
    """A JWKS endpoint on 127.0.0.1 that counts the fetches it answers."""

    def __init__(self, *published: jwk.JWK) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        self.document = jwks_document(*published)
        self.fetches = 0

    def publish(self, *published: jwk.JWK) -> None:
        self.document = jwks_document(*published)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response(self.document)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/.well-known/jwks.json", self._jwks)


@pytest.fixture
async def jwks_server(keys: Keys) -> AsyncIterator[JwksServer]:
    server = JwksServer(keys.ec, keys.rsa)
    await server.start()
    yield server
    await server.stop()


def jwks_settings(url: str, **overrides: Any) -> dict[str, Any]:
    """Daemon overrides: both roles on jwks at `url`, with issuers and audiences."""
    return {
        "producer_auth_provider": "jwks",
        "worker_auth_provider": "jwks",
        "static_tokens": (),
        "identity_jwks_url": url,
        "identity_issuer": ISSUER,
        "identity_audience": API_AUD,
        "worker_jwks_url": url,
        "worker_issuer": WORKER_ISSUER,
        **overrides,
    }


@pytest.fixture
async def jwks_daemon(start_daemon: StartDaemon, jwks_server: JwksServer) -> RunningDaemon:
    return await start_daemon(**jwks_settings(jwks_server.url))


async def call(
    http: aiohttp.ClientSession,
    daemon: RunningDaemon,
    path: str,
    token: str | None,
    body: dict[str, Any],
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(daemon.url + path, json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


async def create(http: aiohttp.ClientSession, daemon: RunningDaemon, token: str) -> tuple[int, Any]:
    return await call(http, daemon, "/v1/codeq/tasks", token, {"command": "A", "payload": {}})


async def claim(http: aiohttp.ClientSession, daemon: RunningDaemon, token: str) -> tuple[int, Any]:
    return await call(http, daemon, "/v1/codeq/tasks/claim", token, {"commands": ["A"]})


async def refused(
    http: aiohttp.ClientSession, daemon: RunningDaemon, token: str, *, worker: bool = False
) -> str:
    """The error message of a request refused with 401."""
    status, body = await (claim if worker else create)(http, daemon, token)
    assert status == 401, body
    return str(body["error"])


# ------------------------------------------------------------ accepted tokens


@pytest.mark.parametrize("key_name", ["ec", "rsa"])
async def test_valid_producer_token_creates(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys, key_name: str
) -> None:
    """A producer token signed with ES256 or RS256 creates a task (202)."""
    status, body = await create(http, jwks_daemon, sign(claims(), getattr(keys, key_name)))
    assert status == 202, body
    assert body["tenantId"] == "acme"


async def test_valid_worker_token_claims(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A worker token claims the producer's task (200)."""
    _, created = await create(http, jwks_daemon, sign(claims(), keys.ec))
    status, task = await claim(http, jwks_daemon, sign(claims("worker"), keys.rsa))
    assert status == 200, task
    assert (task["id"], task["workerId"]) == (created["id"], "worker-1")


async def test_valid_worker_token_on_empty_queue_gets_204(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A worker token on an empty queue gets 204."""
    status, _ = await claim(http, jwks_daemon, sign(claims("worker"), keys.ec))
    assert status == 204


async def test_times_within_clock_skew_are_accepted(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """exp just passed, nbf and iat just ahead, all within the 60 s skew: accepted."""
    now = int(time.time())
    token = sign(claims(exp=now - 30, nbf=now + 30, iat=now + 30), keys.ec)
    status, body = await create(http, jwks_daemon, token)
    assert status == 202, body


async def test_file_jwks_url_is_accepted(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, keys: Keys, tmp_path: Path
) -> None:
    """A file:// JWKS works like a served one."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_document(keys.ec, keys.rsa)))
    daemon = await start_daemon(**jwks_settings(f"file://{path}"))
    status, body = await create(http, daemon, sign(claims(), keys.rsa))
    assert status == 202, body


# ------------------------------------------------------------ refused tokens


async def test_expired_token_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A token past exp (beyond the skew) gets 401."""
    now = int(time.time())
    token = sign(claims(exp=now - 3600, iat=now - 7200, nbf=now - 7200), keys.ec)
    assert "expired" in await refused(http, jwks_daemon, token)


async def test_token_without_exp_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A token with no exp gets 401: it would never expire."""
    token_claims = claims()
    del token_claims["exp"]
    assert "exp" in await refused(http, jwks_daemon, sign(token_claims, keys.ec))


async def test_token_not_yet_valid_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A token whose nbf is beyond the skew in the future gets 401."""
    token = sign(claims(nbf=int(time.time()) + 3600), keys.ec)
    assert "nbf" in await refused(http, jwks_daemon, token)


async def test_token_issued_in_the_future_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A token whose iat is beyond the skew in the future gets 401."""
    token = sign(claims(iat=int(time.time()) + 3600), keys.ec)
    assert "iat" in await refused(http, jwks_daemon, token)


async def test_wrong_audience_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A producer token for another audience gets 401."""
    token = sign(claims(aud=["someone-else", "another"]), keys.ec)
    assert "aud" in await refused(http, jwks_daemon, token)


async def test_worker_token_needs_the_worker_audience(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A worker token whose aud lacks the worker audience gets 401 on claim."""
    token = sign(claims("worker", aud=API_AUD), keys.ec)
    assert WORKER_AUD in await refused(http, jwks_daemon, token, worker=True)


async def test_wrong_issuer_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A token from another issuer gets 401."""
    token = sign(claims(iss="https://evil.test"), keys.ec)
    assert "iss" in await refused(http, jwks_daemon, token)


async def test_alg_none_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """An unsigned token (alg none) gets 401."""
    header = b64(json.dumps({"alg": "none", "kid": "ec-1"}).encode())
    token = f"{header}.{b64(json.dumps(claims()).encode())}."
    assert "'none' is not accepted" in await refused(http, jwks_daemon, token)


async def test_hs256_forged_with_the_public_key_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """HS256 'signed' with the RSA public key's PEM as the secret gets 401."""
    secret = jwk.JWK(kty="oct", k=b64(keys.rsa.export_to_pem()))
    token = sign(claims(), secret, alg="HS256", kid="rsa-1")
    assert "HS256" in await refused(http, jwks_daemon, token)


async def test_algorithm_must_match_the_key_type(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """An RS256 token naming the EC key's kid gets 401."""
    token = sign(claims(), keys.rsa, alg="RS256", kid="ec-1")
    assert "RS256" in await refused(http, jwks_daemon, token)


async def test_tampered_payload_is_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A validly signed token whose payload was changed afterwards gets 401."""
    header, _, signature = sign(claims(), keys.rsa).split(".")
    payload = b64(json.dumps(claims(tenantId="globex")).encode())
    assert "signature" in await refused(http, jwks_daemon, f"{header}.{payload}.{signature}")


async def test_garbage_tokens_are_refused(
    jwks_daemon: RunningDaemon, http: aiohttp.ClientSession
) -> None:
    """Tokens that are not compact JWS (garbage, five-part JWE shape) get 401."""
    for token in ("not-a-jwt", "a.b.c.d.e", "e30.e30.e30"):
        assert await refused(http, jwks_daemon, token)


# ------------------------------------------------------------ keys: refetch, rotation, outage


async def test_forged_kids_cause_at_most_one_refetch_per_interval(
    start_daemon: StartDaemon, jwks_server: JwksServer, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """20 concurrent tokens with unknown kids get 401 and share one JWKS refetch."""
    interval = 1.0
    daemon = await start_daemon(
        **jwks_settings(jwks_server.url, jwks_refetch_interval_seconds=interval)
    )
    assert jwks_server.fetches == 1  # at start
    started = time.monotonic()
    await wait_for(lambda: time.monotonic() - started > interval, timeout=3, message="interval")
    burst_started = time.monotonic()
    forged = [sign(claims(), keys.unpublished, kid=f"forged-{n}") for n in range(20)]
    replies = await asyncio.gather(*(create(http, daemon, token) for token in forged))
    elapsed = time.monotonic() - burst_started
    assert {status for status, _ in replies} == {401}
    assert all("kid" in body["error"] for _, body in replies)
    refetches = jwks_server.fetches - 1
    assert 1 <= refetches <= 1 + int(elapsed / interval), (refetches, elapsed)


async def test_rotated_key_is_accepted_without_restart(
    start_daemon: StartDaemon, jwks_server: JwksServer, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """A token signed by a key newly published in the JWKS is accepted after the
    refetch interval, and tokens of the old keys still are."""
    daemon = await start_daemon(**jwks_settings(jwks_server.url, jwks_refetch_interval_seconds=0.2))
    jwks_server.publish(keys.unpublished, keys.ec, keys.rsa)
    token = sign(claims(), keys.unpublished)

    async def accepted() -> bool:
        return (await create(http, daemon, token))[0] == 202

    await wait_for(accepted, timeout=5, message="the new key to be accepted")
    assert (await create(http, daemon, sign(claims(), keys.ec)))[0] == 202


async def test_jwks_down_at_start_then_recovers(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """With the JWKS unreachable the daemon starts and answers 401 naming the JWKS;
    once the JWKS is up, the same token is accepted without a restart."""
    server = JwksServer(keys.ec)
    daemon = await start_daemon(**jwks_settings(server.url, jwks_refetch_interval_seconds=0.2))
    token = sign(claims(), keys.ec)
    assert "JWKS unavailable" in await refused(http, daemon, token)
    await server.start()
    try:

        async def accepted() -> bool:
            return (await create(http, daemon, token))[0] == 202

        await wait_for(accepted, timeout=5, message="recovery once the JWKS is up")
    finally:
        await server.stop()


# ------------------------------------------------------------ the provider itself


@pytest.fixture
async def provider(jwks_server: JwksServer) -> AsyncIterator[JwksProvider]:
    keys = KeySet(jwks_server.url)
    yield JwksProvider(keys, issuer=ISSUER, audience=API_AUD, clock_skew_seconds=0)
    await keys.aclose()


async def test_verified_token_is_served_from_cache(provider: JwksProvider, keys: Keys) -> None:
    """Verifying the same token twice checks its signature once."""
    token = sign(claims(), keys.ec)
    first = await provider.verify(token)
    second = await provider.verify(token)
    assert first == second
    assert first["sub"] == "svc-a"
    assert provider.keys.signature_checks == 1


async def test_providers_sharing_a_jwks_check_a_signature_once(
    jwks_server: JwksServer, keys: Keys
) -> None:
    """A worker token refused by the producer provider (iss, aud) and accepted by the
    worker provider on the same JWKS costs one signature check."""
    key_set = KeySet(jwks_server.url)
    producer = JwksProvider(key_set, issuer=ISSUER, audience=API_AUD)
    worker = JwksProvider(key_set, issuer=WORKER_ISSUER, audience=WORKER_AUD)
    token = sign(claims("worker"), keys.ec)
    try:
        with pytest.raises(Unauthenticated, match="iss"):
            await producer.verify(token)
        assert (await worker.verify(token))["sub"] == "worker-1"
    finally:
        await key_set.aclose()
    assert key_set.signature_checks == 1


async def test_cached_token_past_exp_is_refused(provider: JwksProvider, keys: Keys) -> None:
    """A token verified (and cached) while valid is refused once its exp passes."""
    expires = time.time() + 0.5
    token = sign(claims(exp=expires), keys.ec)
    await provider.verify(token)
    await wait_for(lambda: time.time() > expires, timeout=3, message="exp to pass")
    with pytest.raises(Unauthenticated, match="expired"):
        await provider.verify(token)


async def test_withdrawn_key_stops_verifying_new_tokens(
    jwks_server: JwksServer, keys: Keys
) -> None:
    """Once the keys are older than max_age, a key the issuer withdrew from the JWKS
    no longer verifies tokens not seen before."""
    key_set = KeySet(jwks_server.url, refetch_interval=0, max_age=0.2)
    provider = JwksProvider(key_set)
    try:
        await provider.verify(sign(claims(), keys.rsa))
        jwks_server.publish(keys.ec)
        fetched = time.monotonic()
        await wait_for(lambda: time.monotonic() - fetched > 0.2, timeout=3, message="max_age")
        with pytest.raises(Unauthenticated, match="kid 'rsa-1'"):
            await provider.verify(sign(claims(jti="another"), keys.rsa))
        assert (await provider.verify(sign(claims(), keys.ec)))["sub"] == "svc-a"
    finally:
        await key_set.aclose()


async def test_concurrent_unknown_kids_share_one_fetch(jwks_server: JwksServer, keys: Keys) -> None:
    """Even with no refetch interval, concurrent unknown-kid lookups share one fetch."""
    key_set = KeySet(jwks_server.url, refetch_interval=0)
    provider = JwksProvider(key_set)
    try:
        await key_set.start()
        forged = [sign(claims(), keys.unpublished, kid=f"forged-{n}") for n in range(20)]
        results = await asyncio.gather(
            *(provider.verify(token) for token in forged), return_exceptions=True
        )
    finally:
        await key_set.aclose()
    assert all(isinstance(r, Unauthenticated) for r in results)
    assert jwks_server.fetches == 2  # the start, then one shared refetch
