"""Outbound webhooks: signing (and its check, for receivers), the outbound URL guard,
per-host circuit breakers and the HTTP client the notifier and the callback
dispatcher share.

Receivers verify a delivery with :func:`verify_signature`::

    from codeq.webhooks import verify_signature

    ok = verify_signature(secret, body, headers["X-CodeQ-Timestamp"],
                          headers["X-CodeQ-Signature"])
"""

from codeq.webhooks.signing import sign, signed_headers, verify_signature

__all__ = ["sign", "signed_headers", "verify_signature"]
