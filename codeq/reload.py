"""What a reload (SIGHUP) may change in a running daemon, and how to describe a
reload without showing a secret: by config key names only."""

from __future__ import annotations

from dataclasses import dataclass, replace

from codeq.config import SPECS, Config

# Applied by reconfiguring logging.
LOGGING = frozenset({"log_level", "log_format"})
# Applied by building a new authenticator and swapping it in.
AUTH = frozenset(
    {
        "producer_auth_provider",
        "worker_auth_provider",
        "static_tokens",
        "identity_jwks_url",
        "identity_issuer",
        "identity_audience",
        "worker_jwks_url",
        "worker_issuer",
        "worker_audience",
        "allowed_clock_skew_seconds",
        "jwks_refetch_interval_seconds",
        "allow_producer_as_worker",
    }
)
RELOADABLE = LOGGING | AUTH


@dataclass(frozen=True, slots=True)
class Changes:
    """The settings that differ between the running config and a reloaded one."""

    reloadable: frozenset[str]  # Config attribute names applied by the reload
    restart_needed: frozenset[str]  # changed too, but only a restart applies them

    @classmethod
    def between(cls, running: Config, reloaded: Config) -> Changes:
        changed = {
            spec.name
            for spec in SPECS
            if getattr(running, spec.name) != getattr(reloaded, spec.name)
        }
        return cls(frozenset(changed & RELOADABLE), frozenset(changed - RELOADABLE))

    @property
    def logging(self) -> bool:
        return bool(self.reloadable & LOGGING)

    @property
    def auth(self) -> bool:
        return bool(self.reloadable & AUTH)

    def applied_to(self, running: Config, reloaded: Config) -> Config:
        """The running config with the reloadable settings taken from `reloaded`."""
        return replace(running, **{name: getattr(reloaded, name) for name in self.reloadable})


def yaml_keys(names: frozenset[str]) -> list[str]:
    """Config attribute names as the sorted YAML keys an operator knows them by."""
    return sorted(spec.yaml_key for spec in SPECS if spec.name in names)
