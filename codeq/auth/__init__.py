"""Authentication: bearer tokens in, Principals out, through pluggable providers."""

from codeq.auth.claims import WORKER_SCOPES, principal_from_claims
from codeq.auth.providers import (
    Authenticates,
    Authenticator,
    AuthProvider,
    ReloadableAuthenticator,
    StaticProvider,
)

__all__ = [
    "WORKER_SCOPES",
    "AuthProvider",
    "Authenticates",
    "Authenticator",
    "ReloadableAuthenticator",
    "StaticProvider",
    "principal_from_claims",
]
