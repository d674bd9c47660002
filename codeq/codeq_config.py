"""codeQ's own configuration forms, read so that a codeQ deployment's files and
environment start codeq unchanged (codeq.config applies them):

- `producerAuthConfig` / `workerAuthConfig` (env PRODUCER_AUTH_CONFIG /
  WORKER_AUTH_CONFIG): codeQ's per-provider JSON. For `static`,
  {"token", "subject", "scopes", "eventTypes", "raw"} is one static token whose
  claims are `raw` plus `sub` (and, for workers, `aud`, `scope`, `eventTypes`);
  for `jwks`, {"jwksUrl", "issuer", "audience", "clockSkew", "httpTimeout"} are the
  JWKS settings of that role.
- keys of codeQ's config file that codeq does not apply: named in one warning at
  start, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

# codeQ config key -> why codeq does not apply it.
NOT_APPLIED: Mapping[str, str] = {
    "identityServiceUrl": "codeQ's legacy identity service; use producerAuthProvider",
    "identityServiceApiKey": "codeQ's legacy identity service; use producerAuthProvider",
    "timezone": "codeq writes every time in UTC (RFC 3339, Z)",
    "requeueInspectLimit": "codeq's claims are O(1) and inspect nothing",
    "subscriptionMinIntervalSeconds": (
        "codeq takes minIntervalSeconds per subscription (default 5), floored by "
        "subscriptionMinIntervalFloorSeconds"
    ),
    "persistenceProvider": "codeq's store is a Redis-protocol server (redisAddr)",
    "persistenceConfig": "codeq's store is a Redis-protocol server (redisAddr)",
    "tracingEnabled": "codeq forwards W3C trace context but exports no spans",
    "tracingServiceName": "codeq forwards W3C trace context but exports no spans",
    "tracingOtlpEndpoint": "codeq forwards W3C trace context but exports no spans",
    "tracingOtlpInsecure": "codeq forwards W3C trace context but exports no spans",
    "tracingSampleRatio": "codeq forwards W3C trace context but exports no spans",
}

STATIC_KEYS = frozenset({"token", "subject", "scopes", "eventTypes", "raw"})
JWKS_KEYS = frozenset({"jwksUrl", "issuer", "audience", "clockSkew", "httpTimeout"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


class ProviderConfigError(ValueError):
    """A provider config codeq cannot read; the message names the key (never a token)."""


def provider_config(value: object) -> dict[str, Any]:
    """A provider config given as a JSON object or its text (env variables)."""
    if isinstance(value, str | bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ProviderConfigError("must be a JSON object") from None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ProviderConfigError("must be a JSON object")
    return dict(value)


def static_token(
    config: Mapping[str, Any], *, worker_audience: str | None
) -> tuple[str, dict[str, Any]]:
    """The (token, claims) of a codeQ static provider config; `worker_audience` for a
    worker's config (its token must then name that audience)."""
    _only(config, STATIC_KEYS, "static")
    token, subject, raw = config.get("token"), config.get("subject"), config.get("raw", {})
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise ProviderConfigError("static: 'token' must be a non-empty string without spaces")
    if not isinstance(subject, str) or not subject:
        raise ProviderConfigError("static: 'subject' must be a non-empty string")
    if not isinstance(raw, Mapping):
        raise ProviderConfigError("static: 'raw' must be an object of claims")
    claims: dict[str, Any] = {**raw, "sub": subject}
    if worker_audience is not None:
        claims["aud"] = [worker_audience]
        claims["scope"] = " ".join(_strings(config, "scopes"))
        claims["eventTypes"] = _strings(config, "eventTypes")
    return token, claims


def jwks_settings(config: Mapping[str, Any], *, role: str) -> dict[str, Any]:
    """codeq's settings (attribute -> value) from a codeQ jwks provider config."""
    _only(config, JWKS_KEYS, "jwks")
    prefix = "identity" if role == "producer" else "worker"
    names = {"jwksUrl": "jwks_url", "issuer": "issuer", "audience": "audience"}
    out: dict[str, Any] = {}
    for key, name in names.items():
        if config.get(key) is not None:
            if not isinstance(config[key], str):
                raise ProviderConfigError(f"jwks: {key!r} must be a string")
            out[f"{prefix}_{name}"] = config[key]
    if config.get("clockSkew") is not None:
        out["allowed_clock_skew_seconds"] = round(seconds(config["clockSkew"], "clockSkew"))
    if config.get("httpTimeout") is not None:
        seconds(config["httpTimeout"], "httpTimeout")  # checked; codeq's fetch has its own
    return out


def seconds(value: object, key: str) -> float:
    """A Go-style duration ("60s", "1m30s", "500ms") or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = value if isinstance(value, str) else ""
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ProviderConfigError(f"jwks: {key!r} must be a duration like '60s' or '1m30s'")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def _only(config: Mapping[str, Any], known: frozenset[str], provider: str) -> None:
    unknown = sorted(set(config) - known)
    if unknown:
        raise ProviderConfigError(
            f"{provider}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )


def _strings(config: Mapping[str, Any], key: str) -> list[str]:
    value = config.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProviderConfigError(f"static: {key!r} must be a list of strings")
    return list(value)
