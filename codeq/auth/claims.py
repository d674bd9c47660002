"""The claims model: what codeq reads from a verified token."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from codeq.domain import Forbidden, Principal, Unauthenticated

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
# Where the tenant comes from, as newest codeQ reads it: `tid`, else its aliases.
TENANT_CLAIMS = ("tid", "tenantId", "tenant_id", "organizationId", "organization_id")
_TENANT = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
ADMIN_SCOPE = "codeq:admin"


def _strings(value: Any) -> frozenset[str]:
    """A claim that may be a space-separated string or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(str(v) for v in value)
    return frozenset()


def tenant_of(claims: Mapping[str, Any], subject: str) -> str:
    """The tenant of verified claims: the tenant claims present (tid, tenantId,
    tenant_id, organizationId, organization_id) must agree and each be a non-empty
    string of at most 128 printable characters; none present: the subject.

    A disagreement or a malformed value is a 403 (fail closed): guessing which claim
    is meant could put a caller in another tenant."""
    present = {name: claims[name] for name in TENANT_CLAIMS if claims.get(name) is not None}
    if not present:
        return subject
    for name, value in present.items():
        if not isinstance(value, str) or not _TENANT.fullmatch(value):
            raise Forbidden(
                f"invalid tenant claims: {name} must be a non-empty string of at most "
                "128 printable characters"
            )
    if len(set(present.values())) > 1:
        raise Forbidden(f"invalid tenant claims: {', '.join(present)} disagree")
    return str(next(iter(present.values())))


def principal_from_claims(claims: Mapping[str, Any], *, worker_audience: str) -> Principal:
    """The Principal of a verified token (tenant: see tenant_of). Admin: `role=ADMIN`,
    `admin=true` or the scope `codeq:admin`. A worker token has `aud` containing the
    worker audience."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("token has no subject (sub)")
    role = claims.get("role")
    scopes = _strings(claims.get("scope", claims.get("scp")))
    return Principal(
        subject=subject,
        tenant=tenant_of(claims, subject),
        scopes=scopes,
        event_types=_strings(claims.get("eventTypes")),
        admin=claims.get("admin") is True
        or (isinstance(role, str) and role.upper() == "ADMIN")
        or ADMIN_SCOPE in scopes,
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
