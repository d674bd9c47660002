"""Local signing keys and dev tokens for JWKS auth (`codeq token`), so JWKS auth can
be tried end to end without an identity provider.

A key directory holds `token-signing-key.json` (the current EC P-256 private key,
mode 0600) and `jwks.json` (the public keys: the current one first, then the ones
it replaced, so tokens they signed stay valid). Point IDENTITY_JWKS_URL and
WORKER_JWKS_URL at `file://<dir>/jwks.json`, or serve it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from jwcrypto import jwk, jwt
from jwcrypto.common import JWException

from codeq.auth.claims import WORKER_SCOPES

SIGNING_KEY_FILE = "token-signing-key.json"
JWKS_FILE = "jwks.json"
ALGORITHM = "ES256"
ROLES = ("producer", "worker", "admin")
MAX_TTL_SECONDS = 365 * 86_400


class TokenError(Exception):
    """A `codeq token` operation cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """Where one key directory keeps its signing key and its JWKS."""

    directory: Path

    @property
    def signing_key(self) -> Path:
        return self.directory / SIGNING_KEY_FILE

    @property
    def jwks(self) -> Path:
        return self.directory / JWKS_FILE


def init_keys(files: KeyFiles, *, force: bool = False) -> str:
    """Creates a signing key and a JWKS holding only its public key; returns its kid.
    Refuses to replace an existing key unless `force` (which invalidates every
    token the old key signed)."""
    if files.signing_key.exists() and not force:
        raise TokenError(
            f"{files.signing_key} exists; use --force to replace it "
            "(tokens it signed stop working), or `codeq token rotate`"
        )
    key = _new_key()
    _publish(files, key, previous=[])
    return str(key["kid"])


def rotate_keys(files: KeyFiles) -> str:
    """A new signing key; the JWKS keeps the previous public keys, so tokens they
    signed stay valid until they expire. Returns the new kid."""
    previous = load_public_keys(files)
    key = _new_key()
    _publish(files, key, previous=previous)
    return str(key["kid"])


def load_public_keys(files: KeyFiles) -> list[dict[str, Any]]:
    """The public keys of the JWKS, current first."""
    try:
        document = orjson.loads(files.jwks.read_bytes())
    except FileNotFoundError:
        raise TokenError(f"no JWKS at {files.jwks}; run `codeq token init` first") from None
    except orjson.JSONDecodeError:
        raise TokenError(f"{files.jwks} is not valid JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise TokenError(f'{files.jwks} has no "keys" list')
    return [dict(k) for k in keys if isinstance(k, dict)]


def public_jwks(files: KeyFiles) -> str:
    """The JWKS document (public keys only), as JSON text."""
    return orjson.dumps({"keys": load_public_keys(files)}, option=orjson.OPT_INDENT_2).decode()


def load_signing_key(files: KeyFiles) -> jwk.JWK:
    try:
        text = files.signing_key.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenError(
            f"no signing key at {files.signing_key}; run `codeq token init` first"
        ) from None
    try:
        key = jwk.JWK.from_json(text)
    except (JWException, ValueError):
        raise TokenError(f"{files.signing_key} does not hold a JWK") from None
    if not key.has_private or key.get("kid") is None:
        raise TokenError(f"{files.signing_key} does not hold a private key with a kid")
    return key


def _new_key() -> jwk.JWK:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    # The RFC 7638 thumbprint: a kid that names the key itself.
    key.update({"kid": key.thumbprint(), "alg": ALGORITHM, "use": "sig"})
    return key


def _publish(files: KeyFiles, key: jwk.JWK, previous: Sequence[Mapping[str, Any]]) -> None:
    """Writes the JWKS (new public key first) and then the private key: a token
    signed by the new key never meets a JWKS without it."""
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public = key.export_public(as_dict=True)
    keys = [public, *(k for k in previous if k.get("kid") != public["kid"])]
    _write(files.jwks, orjson.dumps({"keys": keys}, option=orjson.OPT_INDENT_2) + b"\n", mode=0o644)
    _write(files.signing_key, key.export_private().encode(), mode=0o600)


def _write(path: Path, content: bytes, *, mode: int) -> None:
    """Replaces `path` atomically; the file never exists with a wider mode."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)  # the umask may have narrowed it
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What `codeq token mint` was asked for. None = the role's default."""

    role: str
    subject: str
    tenant: str | None = None
    ttl_seconds: int = 3600
    event_types: Sequence[str] | None = None
    scope: str | None = None
    audience: Sequence[str] | None = None
    issuer: str | None = None
    worker_group: str | None = None


def token_claims(
    request: TokenRequest, *, worker_audience: str, now: float | None = None
) -> dict[str, Any]:
    """The claims of a token for `request` (see SPEC §6 for what each role needs).

    worker: aud = [worker_audience], scope = every worker scope, eventTypes = ["*"];
    admin: role = ADMIN. Explicit values replace those defaults.
    """
    if request.role not in ROLES:
        raise TokenError(f"role must be one of {', '.join(ROLES)}")
    if not request.subject:
        raise TokenError("sub must not be empty")
    if not 1 <= request.ttl_seconds <= MAX_TTL_SECONDS:
        raise TokenError(f"ttl must be between 1 and {MAX_TTL_SECONDS} seconds")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "sub": request.subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + request.ttl_seconds,
        "jti": secrets.token_urlsafe(12),
    }
    worker = request.role == "worker"
    audience = request.audience
    if audience is None and worker:
        audience = [worker_audience]
    if request.issuer:
        claims["iss"] = request.issuer
    if audience:
        claims["aud"] = audience[0] if len(audience) == 1 and not worker else list(audience)
    if request.tenant:
        claims["tenantId"] = request.tenant
    scope = request.scope
    if scope is None and worker:
        scope = " ".join(sorted(WORKER_SCOPES))
    if scope:
        claims["scope"] = scope
    event_types = request.event_types
    if event_types is None and worker:
        event_types = ["*"]
    if event_types is not None:
        claims["eventTypes"] = list(event_types)
    if request.worker_group:
        claims["workerGroup"] = request.worker_group
    if request.role == "admin":
        claims["role"] = "ADMIN"
    return claims


def mint(files: KeyFiles, claims: Mapping[str, Any]) -> str:
    """A compact JWT with these claims, signed (ES256) by the current key."""
    key = load_signing_key(files)
    token = jwt.JWT(
        header={"alg": ALGORITHM, "kid": key.get("kid"), "typ": "JWT"}, claims=dict(claims)
    )
    token.make_signed_token(key)
    return str(token.serialize())


async def serve_jwks(files: KeyFiles, host: str, port: int) -> int:
    """Serves the JWKS at /jwks.json (and /.well-known/jwks.json), read afresh on each
    request so a rotation is served at once, until SIGTERM or SIGINT."""
    load_public_keys(files)  # fail now, not on the first request, if there is none

    async def jwks(request: web.Request) -> web.Response:
        try:
            return web.Response(text=public_jwks(files), content_type="application/json")
        except TokenError as exc:
            return web.json_response({"error": str(exc)}, status=503)

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        print(
            f"codeq token: serving {files.jwks} at http://{host}:{port}/jwks.json",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
