"""Webhook signatures, as codeQ makes them: ``X-CodeQ-Timestamp`` (unix seconds) and
``X-CodeQ-Signature``, the lowercase hex HMAC-SHA256 of ``"<timestamp>." + body``
with the shared secret (``WEBHOOK_HMAC_SECRET``)."""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-CodeQ-Timestamp"
SIGNATURE_HEADER = "X-CodeQ-Signature"
DEFAULT_MAX_AGE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature of a body sent at `timestamp` (unix seconds)."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str | None, body: bytes, now: float | None = None) -> dict[str, str]:
    """The signature headers of a body; none when no secret is configured."""
    if not secret:
        return {}
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
    now: float | None = None,
) -> bool:
    """For receivers: whether a delivery's headers sign exactly this body with the
    shared secret, sent no more than `max_age_seconds` ago (or ahead, for clock
    skew), so a captured delivery cannot be replayed later. Constant-time compare."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    sent = int(timestamp)
    current = time.time() if now is None else now
    if abs(current - sent) > max_age_seconds:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature.strip().lower())
