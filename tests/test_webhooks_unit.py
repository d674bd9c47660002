"""The pieces of outbound webhooks on their own: signatures, the URL guard and the
per-host circuit breaker."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from codeq.webhooks import sign, signed_headers, verify_signature
from codeq.webhooks.breaker import CircuitBreakers
from codeq.webhooks.guard import RefusedTarget, UrlGuard

SECRET = "a-shared-secret"
BODY = b'{"taskId":"t-1","status":"COMPLETED"}'


# ---------------------------------------------------------------- signing


def test_signature_is_codeq_hmac_of_timestamp_dot_body() -> None:
    """The signature is lowercase hex HMAC-SHA256 of "<ts>." + body, as codeQ makes it."""
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, BODY) == expected


def test_signed_headers_verify() -> None:
    """Headers made for a body verify against the same body and secret."""
    headers = signed_headers(SECRET, BODY, now=1_700_000_000)
    assert headers["X-CodeQ-Timestamp"] == "1700000000"
    assert verify_signature(
        SECRET, BODY, headers["X-CodeQ-Timestamp"], headers["X-CodeQ-Signature"], now=1_700_000_010
    )


@pytest.mark.parametrize(
    ("secret", "body", "now"),
    [
        ("another-secret", BODY, 1_700_000_010),
        (SECRET, BODY.replace(b"COMPLETED", b"FAILED"), 1_700_000_010),
        (SECRET, BODY, 1_700_000_000 + 301),  # older than the 300 s window: a replay
    ],
    ids=["wrong secret", "tampered body", "too old"],
)
def test_signature_refused(secret: str, body: bytes, now: int) -> None:
    """A wrong secret, a tampered body or a stale timestamp does not verify."""
    headers = signed_headers(SECRET, BODY, now=1_700_000_000)
    ts, sig = headers["X-CodeQ-Timestamp"], headers["X-CodeQ-Signature"]
    assert not verify_signature(secret, body, ts, sig, now=now)


@pytest.mark.parametrize(("ts", "sig"), [(None, "ab"), ("x1", "ab"), ("1700000000", None)])
def test_missing_or_malformed_headers_do_not_verify(ts: str | None, sig: str | None) -> None:
    """Missing or malformed signature headers are a plain False, never an exception."""
    assert not verify_signature(SECRET, BODY, ts, sig, now=1_700_000_000)


def test_no_secret_sends_no_signature() -> None:
    """Without a configured secret webhooks go unsigned."""
    assert signed_headers(None, BODY) == {}


# ---------------------------------------------------------------- the URL guard


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.7/hook",
        "http://172.16.5.5/hook",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata (link-local)
        "http://[::1]/hook",
        "http://[fd00:ec2::254]/hook",  # unique-local (AWS IPv6 metadata)
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",  # shared address space
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://metadata.google.internal/computeMetadata/v1",
        "ftp://example.com/file",
        "file:///etc/passwd",
    ],
)
def test_guard_refuses_private_and_local_targets(url: str) -> None:
    """Private, loopback, link-local, metadata and non-http(s) targets are refused."""
    with pytest.raises(RefusedTarget):
        UrlGuard().check(url)


@pytest.mark.parametrize("url", ["https://example.com/hook", "http://93.184.216.34:8080/x"])
def test_guard_accepts_public_targets(url: str) -> None:
    """Public names and addresses pass (names are checked again when resolved)."""
    UrlGuard().check(url)


def test_allowed_hosts_let_loopback_through() -> None:
    """webhookAllowedHosts lets the named hosts and addresses through."""
    guard = UrlGuard(["127.0.0.1", "LocalHost"])
    guard.check("http://127.0.0.1:9000/hook")
    guard.check("http://localhost:9000/hook")
    with pytest.raises(RefusedTarget):
        guard.check("http://10.0.0.1/hook")


def test_resolved_addresses_are_checked() -> None:
    """A public-looking name that resolves to a private address is refused at delivery,
    unless that address (or the name) is allowed."""
    with pytest.raises(RefusedTarget):
        UrlGuard().check_addresses("rebind.example.com", ["93.184.216.34", "10.0.0.5"])
    UrlGuard().check_addresses("example.com", ["93.184.216.34"])
    UrlGuard(["10.0.0.5"]).check_addresses("rebind.example.com", ["10.0.0.5"])
    UrlGuard(["rebind.example.com"]).check_addresses("rebind.example.com", ["10.0.0.5"])


# ---------------------------------------------------------------- circuit breakers


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    """N failures in a row open the breaker; a success in between resets the count."""
    clock = Clock()
    breakers = CircuitBreakers(3, 30, clock=clock)
    breakers.failed("h")
    breakers.failed("h")
    breakers.succeeded("h")
    breakers.failed("h")
    breakers.failed("h")
    assert breakers.admit("h") is None
    breakers.failed("h")
    assert breakers.state("h") == "open"
    assert breakers.admit("h") == pytest.approx(30)
    assert breakers.admit("other") is None  # one host's breaker is its own


def test_breaker_half_opens_with_one_probe_then_closes_on_success() -> None:
    """After the cool-down one probe goes through, the rest wait; its success closes."""
    clock = Clock()
    breakers = CircuitBreakers(1, 10, probe_wait_seconds=0.5, clock=clock)
    breakers.failed("h")
    clock.now += 10
    assert breakers.state("h") == "half_open"
    assert breakers.admit("h") is None  # the probe
    assert breakers.admit("h") == 0.5  # everyone else waits for it
    breakers.succeeded("h")
    assert breakers.state("h") == "closed"
    assert breakers.admit("h") is None


def test_failed_probe_reopens_the_breaker() -> None:
    """A probe that fails opens the breaker for another cool-down."""
    clock = Clock()
    breakers = CircuitBreakers(1, 10, clock=clock)
    breakers.failed("h")
    clock.now += 10
    assert breakers.admit("h") is None
    breakers.failed("h")
    assert breakers.state("h") == "open"
    assert breakers.admit("h") == pytest.approx(10)


def test_released_probe_lets_the_next_delivery_probe() -> None:
    """A probe that ended without a verdict (refused by the URL guard) does not keep the
    host waiting forever: the next delivery becomes the probe."""
    clock = Clock()
    breakers = CircuitBreakers(1, 10, clock=clock)
    breakers.failed("h")
    clock.now += 10
    assert breakers.admit("h") is None
    assert breakers.admit("h") is not None
    breakers.release("h")
    assert breakers.admit("h") is None
