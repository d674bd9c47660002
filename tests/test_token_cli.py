"""`codeq token` in subprocesses: key files and modes, minted tokens (producer, worker,
admin) accepted by a daemon whose JWKS is the file the command wrote, and rotation."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import WORKER_AUD, RunningDaemon, free_port, stop_process, subprocess_env, wait_for

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
ALL_SCOPES = "codeq:abandon codeq:claim codeq:heartbeat codeq:nack codeq:result codeq:subscribe"


def codeq_token(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `codeq token ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "codeq", "token", *args],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def mint(keydir: Path, *args: str) -> str:
    done = codeq_token("mint", "--dir", str(keydir), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def decode(token: str, part: int) -> dict[str, Any]:
    """Part 0 (header) or 1 (claims) of a compact JWT."""
    text = token.split(".")[part]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return decoded


def payload(token: str) -> dict[str, Any]:
    return decode(token, 1)


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    done = codeq_token("init", "--dir", str(path))
    assert done.returncode == 0, done.stderr
    return path


async def jwks_daemon(start_daemon: StartDaemon, keydir: Path, **overrides: Any) -> RunningDaemon:
    """A daemon with both roles on jwks, reading the JWKS file `codeq token` wrote."""
    url = f"file://{keydir / 'jwks.json'}"
    return await start_daemon(
        producer_auth_provider="jwks",
        worker_auth_provider="jwks",
        static_tokens=(),
        identity_jwks_url=url,
        worker_jwks_url=url,
        **overrides,
    )


async def post(
    http: aiohttp.ClientSession, daemon: RunningDaemon, path: str, token: str, body: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(daemon.url + "/v1/codeq" + path, json=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else None


# ------------------------------------------------------------ keys


def test_init_writes_a_private_key_0600_and_a_public_jwks(keydir: Path) -> None:
    """init writes the signing key with mode 0600 and a JWKS of its public key only."""
    key_file, jwks_file = keydir / "token-signing-key.json", keydir / "jwks.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private = json.loads(key_file.read_text())
    (public,) = json.loads(jwks_file.read_text())["keys"]
    assert "d" in private
    assert "d" not in public
    assert (public["kty"], public["crv"], public["alg"]) == ("EC", "P-256", "ES256")
    assert public["kid"] == private["kid"]


def test_init_refuses_to_replace_a_key_without_force(keydir: Path) -> None:
    """A second init fails and keeps the key; with --force it replaces it."""
    key_file = keydir / "token-signing-key.json"
    before = key_file.read_text()
    done = codeq_token("init", "--dir", str(keydir))
    assert done.returncode == 1
    assert "--force" in done.stderr
    assert key_file.read_text() == before
    assert codeq_token("init", "--dir", str(keydir), "--force").returncode == 0
    assert key_file.read_text() != before


def test_init_defaults_to_the_state_directory(tmp_path: Path) -> None:
    """Without --dir, the keys go to the configured state directory."""
    done = codeq_token("init", STATE_DIR=str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "state" / "jwks.json").is_file()


def test_jwks_prints_the_public_keys(keydir: Path) -> None:
    """`codeq token jwks` prints the JWKS file's public keys, no private part."""
    done = codeq_token("jwks", "--dir", str(keydir))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads((keydir / "jwks.json").read_text())
    assert '"d"' not in done.stdout


def test_mint_without_a_key_fails_clearly(tmp_path: Path) -> None:
    """mint in a directory without a key exits 1, prints nothing on stdout, and says
    to run init."""
    done = codeq_token("mint", "--dir", str(tmp_path), "--role", "producer", "--sub", "a")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "codeq token init" in done.stderr


# ------------------------------------------------------------ minted tokens


def test_mint_prints_only_the_token(keydir: Path) -> None:
    """mint prints one line on stdout: a compact JWT."""
    done = codeq_token("mint", "--dir", str(keydir), "--role", "producer", "--sub", "svc-a")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert len(lines[0].split(".")) == 3


def test_worker_token_has_worker_defaults(keydir: Path) -> None:
    """A worker token carries the worker audience, every worker scope, eventTypes *
    and the asked lifetime."""
    claims = payload(mint(keydir, "--role", "worker", "--sub", "w-1", "--ttl", "120"))
    assert claims["aud"] == [WORKER_AUD]
    assert claims["scope"] == ALL_SCOPES
    assert claims["eventTypes"] == ["*"]
    assert claims["exp"] - claims["iat"] == 120
    assert claims["exp"] > time.time()


def test_mint_uses_the_configured_issuer_and_audience(keydir: Path) -> None:
    """Without --iss/--aud, a producer token gets IDENTITY_ISSUER and IDENTITY_AUDIENCE."""
    done = codeq_token(
        "mint",
        "--dir",
        str(keydir),
        "--role",
        "producer",
        "--sub",
        "svc-a",
        IDENTITY_ISSUER="https://id.test",
        IDENTITY_AUDIENCE="codeq-api",
    )
    assert done.returncode == 0, done.stderr
    claims = payload(done.stdout.strip())
    assert (claims["iss"], claims["aud"]) == ("https://id.test", "codeq-api")


async def test_minted_producer_token_creates(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, keydir: Path
) -> None:
    """A minted producer token creates a task in its tenant on a jwks daemon."""
    daemon = await jwks_daemon(start_daemon, keydir)
    token = mint(keydir, "--role", "producer", "--sub", "svc-a", "--tenant", "acme")
    status, task = await post(http, daemon, "/tasks", token, {"command": "A", "payload": {}})
    assert status == 202, task
    assert task["tenantId"] == "acme"


async def test_minted_worker_token_claims(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, keydir: Path
) -> None:
    """A minted worker token (eventTypes A) claims the producer's task."""
    daemon = await jwks_daemon(start_daemon, keydir)
    producer = mint(keydir, "--role", "producer", "--sub", "svc-a", "--tenant", "acme")
    worker = mint(
        keydir, "--role", "worker", "--sub", "w-1", "--tenant", "acme", "--event-types", "A"
    )
    _, created = await post(http, daemon, "/tasks", producer, {"command": "A", "payload": {}})
    status, claimed = await post(http, daemon, "/tasks/claim", worker, {"commands": ["A"]})
    assert status == 200, claimed
    assert (claimed["id"], claimed["workerId"]) == (created["id"], "w-1")


async def test_minted_admin_token_is_an_admin(start_daemon: StartDaemon, keydir: Path) -> None:
    """A minted admin token authenticates as an admin of its tenant."""
    daemon = await jwks_daemon(start_daemon, keydir)
    token = mint(keydir, "--role", "admin", "--sub", "ops", "--tenant", "acme")
    assert daemon.daemon.auth is not None
    who = await daemon.daemon.auth.authenticator.producer(token)
    assert (who.admin, who.tenant, who.subject) == (True, "acme", "ops")


async def test_rotate_keeps_old_tokens_valid(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, keydir: Path
) -> None:
    """After rotate, a running daemon accepts tokens of the new key (after the refetch
    interval) and still those of the old one."""
    daemon = await jwks_daemon(start_daemon, keydir, jwks_refetch_interval_seconds=0.2)
    old = mint(keydir, "--role", "producer", "--sub", "svc-a")
    assert codeq_token("rotate", "--dir", str(keydir)).returncode == 0
    new = mint(keydir, "--role", "producer", "--sub", "svc-a")
    assert decode(new, 0)["kid"] != decode(old, 0)["kid"]
    assert len(json.loads((keydir / "jwks.json").read_text())["keys"]) == 2

    async def accepted() -> bool:
        return (await post(http, daemon, "/tasks", new, {"command": "A", "payload": {}}))[0] == 202

    await wait_for(accepted, timeout=5, message="the rotated key to be accepted")
    assert (await post(http, daemon, "/tasks", old, {"command": "A", "payload": {}}))[0] == 202


def start_serve_jwks(keydir: Path, port: int) -> subprocess.Popen[bytes]:
    command = ["token", "serve-jwks", "--dir", str(keydir), "--port", str(port)]
    return subprocess.Popen(
        [sys.executable, "-m", "codeq", *command],
        env=subprocess_env(LOG_FORMAT="json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_serve_jwks_serves_the_file(keydir: Path, http: aiohttp.ClientSession) -> None:
    """`codeq token serve-jwks` serves jwks.json over HTTP until SIGTERM, then exits 0."""
    port = free_port()
    proc = start_serve_jwks(keydir, port)
    try:

        async def served() -> Any:
            assert proc.poll() is None, "serve-jwks exited"
            try:
                async with http.get(f"http://127.0.0.1:{port}/jwks.json") as resp:
                    return await resp.json() if resp.status == 200 else None
            except aiohttp.ClientConnectionError:
                return None

        document = await wait_for(served, timeout=20, message="serve-jwks to answer")
        assert document == json.loads((keydir / "jwks.json").read_text())
    finally:
        stop_process(proc)
    assert proc.returncode == 0
