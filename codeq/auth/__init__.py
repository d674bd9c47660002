"""Authentication: bearer tokens in, Principals out, through pluggable providers."""

from codeq.auth.claims import WORKER_SCOPES, principal_from_claims
from codeq.auth.providers import Authenticator, AuthProvider, StaticProvider

__all__ = [
    "WORKER_SCOPES",
    "AuthProvider",
    "Authenticator",
    "StaticProvider",
    "principal_from_claims",
]
