"""The claims model: what codeq reads from a verified token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codeq.domain import Principal, Unauthenticated

WORKER_SCOPES = frozenset(
    {
        "codeq:claim",
        "codeq:heartbeat",
        "codeq:abandon",
        "codeq:nack",
        "codeq:result",
        "codeq:subscribe",
    }
)
TENANT_CLAIMS = ("tenantId", "tenant_id", "organizationId", "organization_id")


def _strings(value: Any) -> frozenset[str]:
    """A claim that may be a space-separated string or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(str(v) for v in value)
    return frozenset()


def principal_from_claims(claims: Mapping[str, Any], *, worker_audience: str) -> Principal:
    """The Principal of a verified token.

    Tenant = the first present of tenantId, tenant_id, organizationId,
    organization_id, else sub. A worker token has `aud` containing the worker audience.
    """
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("token has no subject (sub)")
    tenant = next(
        (str(claims[c]) for c in TENANT_CLAIMS if claims.get(c) not in (None, "")), subject
    )
    role = claims.get("role")
    return Principal(
        subject=subject,
        tenant=tenant,
        scopes=_strings(claims.get("scope", claims.get("scp"))),
        event_types=_strings(claims.get("eventTypes")),
        admin=claims.get("admin") is True or (isinstance(role, str) and role.upper() == "ADMIN"),
        worker=worker_audience in _strings(claims.get("aud")),
        worker_group=claims.get("workerGroup") or None,
    )


def as_worker(producer: Principal) -> Principal:
    """allowProducerAsWorker (dev only): a producer acts as a wildcard worker."""
    return Principal(
        subject=producer.subject,
        tenant=producer.tenant,
        scopes=WORKER_SCOPES,
        event_types=frozenset({"*"}),
        admin=producer.admin,
        worker=True,
    )
