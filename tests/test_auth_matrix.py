"""The auth matrix: every endpoint x every way a caller can be refused, under JWKS auth.

Each refused request gets the right status (401 / 403 / 404) with an {"error"} body,
and the store is byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Api, RunningDaemon
from jwcrypto import jwk, jwt
from redis.asyncio import Redis

PRODUCER_ISS = "https://identity.test"
WORKER_ISS = "https://workers.test"
API_AUD = "codeq-api"
WORKER_AUD = "codeq-worker"
ALL_SCOPES = "codeq:claim codeq:heartbeat codeq:abandon codeq:nack codeq:result codeq:subscribe"

TASK = "/v1/codeq/tasks/{id}"
# (method, path, body, kind): kind says which token the endpoint wants.
ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("POST", "/v1/codeq/tasks", {"command": "A", "payload": {}}, "producer"),
    ("POST", "/v1/codeq/tasks/claim", {"commands": ["A"]}, "worker"),
    ("POST", TASK + "/heartbeat", {}, "worker"),
    ("POST", TASK + "/abandon", {}, "worker"),
    ("POST", TASK + "/nack", {"delaySeconds": 5}, "worker"),
    ("POST", TASK + "/result", {"status": "COMPLETED", "result": {}}, "worker"),
    ("GET", TASK, None, "any"),
    ("GET", TASK + "/result", None, "any"),
    ("GET", TASK + "/history", None, "any"),
    ("POST", TASK + "/cancel", {}, "producer"),
    ("GET", "/v1/codeq/admin/queues", None, "admin"),
    ("GET", "/v1/codeq/admin/queues/A", None, "admin"),
    ("POST", "/v1/codeq/admin/tasks/cleanup", {"before": "2099-01-01T00:00:00Z"}, "admin"),
    ("POST", "/v1/codeq/admin/queues/A/pause", {}, "admin"),
    ("POST", "/v1/codeq/admin/queues/A/resume", {}, "admin"),
    ("POST", "/v1/codeq/admin/queues/A/purge", {}, "admin"),
    ("GET", "/v1/codeq/admin/queues/A/dlq", None, "admin"),
    ("POST", "/v1/codeq/admin/queues/A/dlq/redrive", {"all": True}, "admin"),
]
SCOPE_OF = {"claim": "codeq:claim", "heartbeat": "codeq:heartbeat", "abandon": "codeq:abandon",
            "nack": "codeq:nack", "result": "codeq:result"}  # fmt: skip


class Keys:
    """The identity provider of the test: signing keys and a JWKS file."""

    def __init__(self, folder: Path) -> None:
        self.rsa = jwk.JWK.generate(kty="RSA", size=2048, kid="rsa-1")
        self.ec = jwk.JWK.generate(kty="EC", crv="P-256", kid="ec-1")
        self.stranger = jwk.JWK.generate(kty="EC", crv="P-256", kid="ec-unknown")
        self.path = folder / "jwks.json"
        keyset = {"keys": [json.loads(k.export_public()) for k in (self.rsa, self.ec)]}
        self.path.write_text(json.dumps(keyset))

    def sign(self, claims: dict[str, Any], key: jwk.JWK | None = None, alg: str = "ES256") -> str:
        key = key or self.ec
        token = jwt.JWT(header={"alg": alg, "kid": key.get("kid")}, claims=claims)
        token.make_signed_token(key)
        return str(token.serialize())


def claims_for(kind: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iat": now, "nbf": now - 1, "exp": now + 600, "tenantId": "acme"}
    if kind == "worker":
        base |= {"iss": WORKER_ISS, "aud": [WORKER_AUD], "sub": "worker-1", "scope": ALL_SCOPES,
                 "eventTypes": ["*"]}  # fmt: skip
    else:
        base |= {"iss": PRODUCER_ISS, "aud": API_AUD, "sub": "svc-a"}
        if kind == "admin":
            base["role"] = "ADMIN"
    return base | overrides


def alg_none(claims: dict[str, Any]) -> str:
    import base64

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def hs256_forged(keys: Keys, claims: dict[str, Any]) -> str:
    """The classic forgery: HS256 signed with the public key's PEM as the secret."""
    secret = jwk.JWK(kty="oct", k=_b64(keys.rsa.export_to_pem()), kid="rsa-1")
    token = jwt.JWT(header={"alg": "HS256", "kid": "rsa-1"}, claims=claims)
    token.make_signed_token(secret)
    return str(token.serialize())


def _b64(raw: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def refused_tokens(keys: Keys, kind: str) -> dict[str, str | None]:
    """Every way a token for `kind` is refused at authentication (401)."""
    token_kind = "producer" if kind in ("any", "admin") else kind
    good = claims_for(token_kind, role="ADMIN") if kind == "admin" else claims_for(token_kind)
    now = int(time.time())
    return {
        "no token": None,
        "garbage": "not-a-jwt",
        "expired": keys.sign(good | {"exp": now - 3600, "iat": now - 7200, "nbf": now - 7200}),
        "not yet valid": keys.sign(good | {"nbf": now + 3600}),
        "wrong aud": keys.sign(good | {"aud": "someone-else"}),
        "wrong iss": keys.sign(good | {"iss": "https://evil.test"}),
        "unknown key": keys.sign(good, key=keys.stranger),
        "alg none": alg_none(good),
        "hs256 forged": hs256_forged(keys, good),
        "rsa key, tampered": keys.sign(good, key=keys.rsa, alg="RS256")[:-4] + "AAAA",
    }


async def snapshot(redis: Redis) -> dict[str, Any]:
    """Every key and its value, to prove a refused request changed nothing."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter("*"):
        kind = await redis.type(key)
        if kind == "hash":
            out[key] = await redis.hgetall(key)
        elif kind == "list":
            out[key] = await redis.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = sorted(await redis.smembers(key))
        elif kind == "zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = await redis.get(key)
    return out


@pytest.fixture
async def jwks_api(
    tmp_path: Path, start_daemon: Any, http: Any
) -> AsyncIterator[tuple[Api, Keys, RunningDaemon]]:
    keys = Keys(tmp_path)
    url = f"file://{keys.path}"
    daemon = await start_daemon(
        producer_auth_provider="jwks", worker_auth_provider="jwks", static_tokens=(),
        identity_jwks_url=url, identity_issuer=PRODUCER_ISS, identity_audience=API_AUD,
        worker_jwks_url=url, worker_issuer=WORKER_ISS,
    )  # fmt: skip
    yield Api(http, daemon.url), keys, daemon


async def call(api: Api, method: str, path: str, token: str | None, body: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with api.http.request(method, api.base + path, json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)


async def leased_task(api: Api, keys: Keys) -> str:
    """A task of tenant acme, claimed by worker-1 (so by-id endpoints have a target)."""
    producer, worker = keys.sign(claims_for("producer")), keys.sign(claims_for("worker"))
    status, created = await call(
        api, "POST", "/v1/codeq/tasks", producer, {"command": "A", "payload": {}}
    )
    assert status == 202, created
    status, claimed = await call(api, "POST", "/v1/codeq/tasks/claim", worker, {"commands": ["A"]})
    assert status == 200 and claimed["id"] == created["id"], claimed
    return str(created["id"])


def cases(keys: Keys, kind: str, path: str) -> list[tuple[str, str | None, int]]:
    """(case, token, expected status) for one endpoint."""
    out: list[tuple[str, str | None, int]] = [
        (name, token, 401) for name, token in refused_tokens(keys, kind).items()
    ]
    if kind == "worker":
        action = path.rsplit("/", 1)[-1]
        scope = SCOPE_OF[action]
        scopes = " ".join(s for s in ALL_SCOPES.split() if s != scope)
        out.append(("missing scope", keys.sign(claims_for("worker", scope=scopes)), 403))
        if action == "claim":
            out.append(
                ("outside eventTypes", keys.sign(claims_for("worker", eventTypes=["B"])), 403)
            )
    if "{id}" in path:
        other = "worker" if kind == "worker" else "producer"
        claims = claims_for(other, tenantId="globex")
        if kind == "admin":
            claims["role"] = "ADMIN"
        out.append(("other tenant", keys.sign(claims), 404))
    if kind == "admin":
        out.append(("not an admin", keys.sign(claims_for("producer")), 403))
    return out


async def test_auth_matrix(jwks_api: tuple[Api, Keys, RunningDaemon], redis: Redis) -> None:
    """Every endpoint refuses every bad caller with the right status and changes nothing."""
    api, keys, _ = jwks_api
    task_id = await leased_task(api, keys)
    checked = 0
    failures = []
    for method, template, body, kind in ENDPOINTS:
        path = template.format(id=task_id)
        for case, token, expected in cases(keys, kind, template):
            before = await snapshot(redis)
            status, reply = await call(api, method, path, token, body)
            after = await snapshot(redis)
            if status != expected or not (isinstance(reply, dict) and reply.get("error")):
                failures.append(f"{method} {template} [{case}]: {status} {reply}")
            elif before != after:
                failures.append(f"{method} {template} [{case}]: store changed")
            checked += 1
    print(f"auth matrix: {checked} cases over {len(ENDPOINTS)} endpoints")
    assert not failures, "\n".join(failures)
    assert checked >= 200
