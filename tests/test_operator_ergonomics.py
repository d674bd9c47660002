"""Operator ergonomics (issue 16): a claim cannot claim everything by accident, an
expired lease and a dead-lettering say so in the log (rate-bounded)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from conftest import Api, RunningDaemon, ServeProcess, free_port, subprocess_env, wait_for
from structlog.testing import capture_logs

from codeq.observability import LogBudget

TASKS = "/v1/codeq/tasks"


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_an_empty_commands_list_is_400_and_claims_nothing(api: Api) -> None:
    """`"commands": []` reads like "nothing" but used to claim every command the
    token allows: a 400 naming the field, on claim and batch claim; nothing leased.
    Omitting the field still claims every command."""
    task = await api.create("EMPTY")
    for path, body in (
        (f"{TASKS}/claim", {"commands": []}),
        (f"{TASKS}/claim/batch", {"commands": [], "count": 5}),
    ):
        status, answer, _ = await api.call("POST", path, "worker", body)
        assert (status, answer["field"]) == (400, "commands"), answer
        assert "at least one command" in answer["error"]
    status, stored, _ = await api.call("GET", f"{TASKS}/{task['id']}", "producer")
    assert stored["status"] == "PENDING"
    claimed = await api.claim()
    assert claimed is not None and claimed["id"] == task["id"]


async def test_an_unknown_claim_field_is_logged_once_per_caller(api: Api) -> None:
    """The typo `command` (for `commands`) claims every command: besides the
    X-CodeQ-Warning header, it is logged -- once per caller, not per request."""
    typo = f"command_{secrets.token_hex(4)}"  # a caller and field set of this test's own
    with capture_logs() as logs:
        for _ in range(3):
            status, _, headers = await api.call(
                "POST", f"{TASKS}/claim", "worker", {typo: ["X"], "waitSeconds": 0}
            )
            assert status == 204
            assert headers["X-CodeQ-Warning"] == f"unknown fields ignored: {typo}"
    [line] = events(logs, "unknown fields ignored")
    assert line["fields"] == [typo] and line["log_level"] == "warning"


async def test_expired_leases_and_dead_letters_are_logged(api: Api, daemon: RunningDaemon) -> None:
    """The reaper used to be silent: an expired lease is one warning line (task id,
    command, worker, attempt, what became of it), and so is a dead-lettering nack."""
    retried = await api.create("REAP")
    doomed = await api.create("REAP", maxAttempts=1)
    with capture_logs() as logs:
        for _ in range(2):
            assert await api.claim(commands=["REAP"], leaseSeconds=1) is not None
        await wait_for(lambda: len(events(logs, "lease expired")) == 2, timeout=10)
        nacked = await api.create("NACKED", maxAttempts=1)
        claimed = await api.claim(commands=["NACKED"])
        status, outcome, _ = await api.call("POST", f"{TASKS}/{claimed['id']}/nack", "worker", {})
        assert (status, outcome["status"]) == (200, "dlq")
    lines = {line["task_id"]: line for line in events(logs, "lease expired")}
    assert lines[retried["id"]]["outcome"] in ("requeued", "delayed")
    assert lines[doomed["id"]]["outcome"] == "dead_lettered"
    for line in lines.values():
        assert (line["command"], line["attempt"], line["log_level"]) == ("REAP", 1, "warning")
        assert line["worker"]
    [dead] = events(logs, "task dead-lettered")
    assert (dead["task_id"], dead["command"]) == (nacked["id"], "NACKED")


def test_a_burst_of_lines_costs_a_bounded_number() -> None:
    """LogBudget: at most `per_minute` lines a minute; the next line written says how
    many were left out."""
    budget = LogBudget(per_minute=3)
    assert [budget.allow() for _ in range(5)] == [True, True, True, False, False]
    assert budget.suppressed() == 2 and budget.suppressed() == 0


async def test_post_only_paths_and_bad_command_paths(api: Api) -> None:
    """GET on the POST-only /tasks/claim and /tasks/batch is a 405 naming POST (it
    used to look up a task called "claim"); a command path with a trailing newline
    is a 400, also for the DLQ listing."""
    for path in (f"{TASKS}/claim", f"{TASKS}/batch"):
        status, _, headers = await api.call("GET", path, "worker")
        assert status == 405 and headers["Allow"] == "POST", path
    for path in ("/v1/codeq/admin/queues/A%0A/dlq", "/v1/codeq/admin/queues/a%20b/dlq"):
        status, answer, _ = await api.call("GET", path, "admin")
        assert (status, answer["field"]) == (400, "command"), answer


async def test_idempotent_replays_are_marked_and_a_different_body_warned(api: Api) -> None:
    """Reusing an idempotency key returns the first task, as before -- now marked
    (`X-CodeQ-Idempotent-Replay: true`, `idempotentReplay` on batch items), with a
    warning naming what a different body asked for."""
    body = {"command": "IDEM", "payload": {"a": 1, "b": 2}, "idempotencyKey": "k-1"}
    status, first, headers = await api.call("POST", TASKS, "producer", body)
    assert status == 202 and "X-CodeQ-Idempotent-Replay" not in headers
    same = {**body, "payload": {"b": 2, "a": 1}}  # the same JSON value
    status, again, headers = await api.call("POST", TASKS, "producer", same)
    assert (status, again["id"], headers["X-CodeQ-Idempotent-Replay"]) == (202, first["id"], "true")
    assert "X-CodeQ-Warning" not in headers
    other = {**body, "payload": {"a": 2}, "priority": 5}
    status, replayed, headers = await api.call("POST", TASKS, "producer", other)
    assert replayed["id"] == first["id"] and replayed["payload"] == first["payload"]
    assert headers["X-CodeQ-Warning"] == (
        "idempotencyKey already names a task with another payload, priority;"
        " that task is returned, unchanged"
    )
    batch = {"tasks": [other, {"command": "IDEM", "payload": {}, "idempotencyKey": "k-2"}]}
    status, answer, _ = await api.call("POST", f"{TASKS}/batch", "producer", batch)
    replay, fresh = answer["results"]
    assert replay["idempotentReplay"] is True and "payload" in replay["warning"]
    assert "idempotentReplay" not in fresh and "warning" not in fresh


# ------------------------------------------------------------ start failures


def _run_codeq(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codeq", *args],
        env=subprocess_env(LOG_FORMAT="json", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _cannot_start(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one `cannot start` line of a failed start (no traceback anywhere)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [
        json.loads(text)
        for text in result.stderr.splitlines()
        if text.startswith("{") and json.loads(text)["event"] == "cannot start"
    ]
    return line


async def test_expected_start_failures_are_one_line_with_the_fix(
    state_dir: Path, serve: Callable[..., ServeProcess], http: aiohttp.ClientSession
) -> None:
    """A taken port, a state directory in use by another daemon, a store that does not
    answer, a bad REDIS_SERVER_PATH, a state directory that cannot be created: each
    is one `cannot start` line naming the problem and the fix, exit 1 -- they used to
    be 20-40-line tracebacks. `codeq token init --dir` likewise."""
    running = serve(STATE_DIR=str(state_dir))
    await running.ready(http)
    cases = [
        ({"STATE_DIR": str(state_dir), "PORT": "0"}, "in use by another", "STATE_DIR"),
        ({"REDIS_ADDR": f"127.0.0.1:{free_port()}", "PORT": "0"}, "unavailable", "REDIS_ADDR"),
        (
            {"STATE_DIR": str(state_dir / "other"), "REDIS_SERVER_PATH": "/nonexistent"},
            "/nonexistent",
            "REDIS_SERVER_PATH",
        ),
        ({"STATE_DIR": "/proc/codeq-cannot-be-here", "PORT": "0"}, "/proc/", "STATE_DIR"),
    ]
    for env, problem, fix in cases:
        line = await asyncio.to_thread(
            _cannot_start, await asyncio.to_thread(_run_codeq, "serve", **env)
        )
        assert problem in line["error"] and fix in line["fix"], line
    taken = await asyncio.to_thread(
        _run_codeq, "serve", STATE_DIR=str(state_dir / "third"), PORT=str(running.port)
    )
    line = _cannot_start(taken)
    assert "address already in use" in line["error"] and "PORT" in line["fix"], line
    result = await asyncio.to_thread(_run_codeq, "token", "init", "--dir", "/proc/codeq-no")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "--dir" in result.stderr


# ------------------------------------------------------------ config, documented and explained

REPO = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme_config_table() -> None:
    """The README's configuration table names every key (it used to leave 13 out)."""
    from codeq.config import SPECS

    section = (REPO / "README.md").read_text().split("## Configuration", 1)[1]
    section = section.split("\n## ", 1)[0]
    missing = [spec.yaml_key for spec in SPECS if f"`{spec.yaml_key}`" not in section]
    assert not missing, f"not in the README's config table: {missing}"


def test_config_check_sources_says_where_each_value_came_from(tmp_path: Path) -> None:
    """`codeq config check --sources`: each key with its value and origin (default,
    file, env, flag) and the paths codeq resolved."""
    config = tmp_path / "codeq.yaml"
    config.write_text("historyLimit: 40\nport: 9000\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "codeq",
            "config",
            "check",
            "--sources",
            "--config",
            str(config),
            "--port",
            "9100",
        ],
        env=subprocess_env(RETENTION_SECONDS="600", STATE_DIR=str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line[:1] != " "}
    assert lines["historyLimit"].endswith(f"40  (file {config})")
    assert lines["retentionSeconds"].endswith("600  (env RETENTION_SECONDS)")
    assert lines["port"].endswith("9100  (flag --port)")
    assert lines["maxAttemptsDefault"].endswith("5  (default)")
    assert f"stateDir {tmp_path / 'state'}" in result.stdout
    assert f"localArtifactsDir {tmp_path / 'state' / 'artifacts'}" in result.stdout


def _jwks_walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### JWKS auth end to end", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


async def test_readme_jwks_walkthrough_works_verbatim(tmp_path: Path) -> None:
    """The README's JWKS block, run by bash with the virtualenv on PATH: a daemon
    of its own (its port and state directory moved to free ones), 202 for the
    producer, 200 for the worker, 401 for the forged token."""
    state = Path(tempfile.mkdtemp(prefix="cq-jwks-", dir="/tmp"))  # a short socket path
    script = _jwks_walkthrough().replace("PORT=8090", f"PORT={free_port()}")
    script = script.replace("/tmp/codeq-jwks", str(state))
    # however the block ends, the daemon it started ends with it
    script = "trap 'kill ${DAEMON:-} 2>/dev/null || true' EXIT\n" + script
    bin_dir = Path(sys.executable).parent
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-euo", "pipefail", "-c", script],
            env={"HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        shutil.rmtree(state, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    created, claimed, forged = [json.loads(line) for line in done.stdout.splitlines()]
    assert created["status"] == "PENDING" and claimed["id"] == created["id"], done.stdout
    assert "error" in forged and "token" in forged["error"], forged


async def test_the_dev_token_is_printed_on_a_terminal_only(state_dir: Path) -> None:
    """`codeq serve` in dev mode prints its token when stderr is a terminal (a
    developer's shell), never into a log or the journal (see test_processes)."""
    primary, secondary = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codeq",
        "serve",
        env=subprocess_env(STATE_DIR=str(state_dir), PORT=str(free_port()), LOG_FORMAT="json"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while b"dev token: " not in seen or not seen.endswith(b"\n"):
            assert loop.time() < deadline and proc.returncode is None, seen.decode("replace")
            ready, _, _ = await asyncio.to_thread(select.select, [primary], [], [], 0.5)
            if ready:
                seen += os.read(primary, 65536)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        os.close(primary)
    token = (state_dir / "dev-token").read_text().strip()
    assert f"dev token: {token}" in seen.decode()
