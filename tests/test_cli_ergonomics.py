"""The `codeq` command as a worker author, a script and a new user meet it, through
the real command in a subprocess against a real daemon: Ctrl-C on a worker, a bad
--handler, `task result`'s exit codes, bulk creates under a rate limit, the Unix
socket, flags and messages, and what a client command does not import.

The CLI does not depend on the store's kind, so these run on Redis only."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import TOKENS, Api, RunningDaemon, free_port, wait_for
from test_cli import Cli, Done, cli_env, finish, history_events, queue_stats, start_cli

from codeq.client import Client, Producer

# Redis only (the session store fixture's own params are both kinds).
pytestmark = pytest.mark.parametrize("store_server", ["redis"], indirect=True)


@pytest.fixture
def codeq(daemon: RunningDaemon, tmp_path: Path) -> Cli:
    return Cli(daemon, tmp_path)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A folder for a Unix socket, short enough for sun_path (107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="cq-cli-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def parked_claims(daemon: RunningDaemon) -> int:
    """How many claim requests the daemon holds in a long poll."""
    service = daemon.daemon.service
    assert service is not None
    return service.scheduler.waiting()


async def read_until(stream: asyncio.StreamReader | None, text: str, timeout: float = 15) -> str:
    """Reads lines until one contains `text`; returns what was read."""
    assert stream is not None
    seen = ""
    async with asyncio.timeout(timeout):
        while text not in seen:
            line = await stream.readline()
            assert line, f"the stream ended before {text!r}:\n{seen}"
            seen += line.decode()
    return seen


async def status_of(api: Api, task_id: str) -> str:
    return str((await api.get(task_id))[1]["status"])


async def status_is(api: Api, task_id: str, status: str) -> bool:
    return await status_of(api, task_id) == status


# ------------------------------------------------------------ Ctrl-C (item 7)


async def test_ctrl_c_on_an_idle_worker_ends_its_long_poll_at_once(
    codeq: Cli, daemon: RunningDaemon
) -> None:
    """SIGINT while the worker's claim is parked (--poll 30): exit 0 within seconds,
    not after the long poll."""
    worker = await codeq.start(
        "worker", "start", "--events", "IDLE", "--poll", "30", "--handler", "true", who="worker"
    )
    await wait_for(lambda: parked_claims(daemon) == 1, timeout=15, message="a parked claim")
    worker.send_signal(signal.SIGINT)
    done = await finish(worker, timeout=10)  # the long poll had 30 s to go
    assert done.code == 0, done.err
    assert "SIGINT: stopping" in done.err and "claimed 0" in done.err


async def test_a_dropped_long_poll_leases_nothing(
    codeq: Cli, api: Api, daemon: RunningDaemon
) -> None:
    """After Ctrl-C dropped a parked claim, the next task goes to the next claim (the
    daemon's long-poll whose client left hands the wake-up on; it used to lease the
    task to nobody until the lease ran out)."""
    worker = await codeq.start(
        "worker", "start", "--events", "DROP", "--poll", "30", "--handler", "true", who="worker"
    )
    await wait_for(lambda: parked_claims(daemon) == 1, timeout=15, message="a parked claim")
    worker.send_signal(signal.SIGINT)
    assert (await finish(worker, timeout=10)).code == 0
    task = await api.create("DROP")
    claimed = await api.claim(commands=["DROP"], waitSeconds=2)
    assert claimed is not None and claimed["id"] == task["id"]


async def test_second_ctrl_c_stops_a_running_handler_now(codeq: Cli, api: Api) -> None:
    """First SIGINT: the handler may run on (--grace 60); a second one kills it now and
    gives its task back (PENDING, 'abandoned' in its history); exit 0."""
    task = await api.create("LONG")
    worker = await codeq.start(
        "worker", "start", "--events", "LONG", "--poll", "1", "--grace", "60",
        "--handler", "sleep 60", who="worker",
    )  # fmt: skip
    await wait_for(lambda: status_is(api, task["id"], "IN_PROGRESS"), timeout=15)
    worker.send_signal(signal.SIGINT)
    first = await read_until(worker.stderr, "Ctrl-C again")
    assert await status_of(api, task["id"]) == "IN_PROGRESS"  # still given its grace
    worker.send_signal(signal.SIGINT)
    done = await finish(worker, timeout=15)  # not the 60 s of grace
    assert done.code == 0, first + done.err
    assert "SIGINT again: stopping running handlers now" in done.err
    assert await status_of(api, task["id"]) == "PENDING"
    assert "abandoned" in [e["event"] for e in await history_events(api, task["id"])]


# ------------------------------------------------------------ --handler (item 8)


async def test_a_handler_that_cannot_run_is_refused_before_any_claim(
    codeq: Cli, api: Api, tmp_path: Path
) -> None:
    """A missing, non-executable, unknown or unparsable --handler: one line naming the
    problem, exit 2, and the queue's task untouched (no attempt spent)."""
    task = await api.create("H", maxAttempts=1)
    script = tmp_path / "h.sh"
    script.write_text("#!/bin/sh\necho '{}'\n")  # not executable
    cases = {
        "./missing.sh": "does not exist",
        str(script): f"is not executable (chmod +x {script})",
        "no-such-program-42 --flag": "'no-such-program-42' is not a command on PATH",
        "echo 'unbalanced": "not valid shell",
    }
    for handler, problem in cases.items():
        done = await codeq(
            "worker", "start", "--events", "H", "--handler", handler, "--poll", "1", who="worker"
        )
        assert done.code == 2, (handler, done.err)
        lines = done.err.strip().splitlines()
        assert len(lines) == 1 and problem in lines[0] and "--handler" in lines[0], done.err
    _, got = await api.get(task["id"])
    assert (got["status"], got["attempts"]) == ("PENDING", 0)


async def test_a_failing_handler_line_shows_the_reason_and_its_stderr(codeq: Cli, api: Api) -> None:
    """The worker's line for a nacked task carries the reason with the handler's
    stderr (trimmed to one line), even with --quiet."""
    task = await api.create("F", maxAttempts=3)
    done = await codeq(
        "worker", "start", "--events", "F", "--max-tasks", "1", "--quiet",
        "--handler", "echo 'first line' >&2; echo 'disk full' >&2; exit 3", who="worker",
    )  # fmt: skip
    assert done.code == 0, done.err
    line = next(line for line in done.err.splitlines() if task["id"] in line)
    assert line.startswith("codeq worker: ") and " nacked " in line
    assert line.endswith(": exit 3: first line | disk full"), line


# ------------------------------------------------------------ task result (item 9)


async def test_task_result_exit_codes_say_how_the_task_ended(codeq: Cli, api: Api) -> None:
    """0 COMPLETED, 3 FAILED (a handler's, or dead-lettered: the table says so with
    lastError), 4 CANCELLED, 1 not ended yet."""
    completed = await api.create("R")
    claimed = await api.claim(commands=["R"])
    assert (await api.result(claimed["id"]))[0] == 200

    failed = await api.create("R")
    claimed = await api.claim(commands=["R"])
    status, _ = await api.result(claimed["id"], status="FAILED", error="bad input", result=None)
    assert status == 200

    dead = await api.create("R", maxAttempts=1)
    claimed = await api.claim(commands=["R"])
    nack = ("POST", f"/v1/codeq/tasks/{claimed['id']}/nack", "worker", {"reason": "exit 3: oom"})
    status, body, _ = await api.call(*nack)
    assert (status, body["status"]) == (200, "dlq"), body

    cancelled = await api.create("R")
    cancel = await api.call("POST", f"/v1/codeq/tasks/{cancelled['id']}/cancel", "producer")
    assert cancel[0] == 200, cancel
    pending = await api.create("R")

    expected = {completed["id"]: 0, failed["id"]: 3, dead["id"]: 3, cancelled["id"]: 4}
    expected[pending["id"]] = 1
    for task_id, code in expected.items():
        done = await codeq("task", "result", task_id)
        assert done.code == code, (task_id, done.out, done.err)
    shown = await codeq("task", "result", dead["id"])
    assert "dead-lettered after 1 attempt(s)" in shown.out
    assert "MAX_ATTEMPTS" in shown.out and "exit 3: oom" in shown.out
    assert "bad input" in (await codeq("task", "result", failed["id"])).out
    as_json = await codeq("task", "result", dead["id"], "--json")
    assert as_json.code == 3 and as_json.json()["task"]["lastError"] == "exit 3: oom"


async def test_task_result_wait_exits_3_when_the_task_fails_meanwhile(codeq: Cli, api: Api) -> None:
    """`task result --wait` in a script: the exit code is the outcome once it ends."""
    task = await api.create("W")
    waiting = await codeq.start("task", "result", task["id"], "--wait", "20", "--json")
    claimed = await api.claim(commands=["W"], waitSeconds=5)
    assert (await api.result(claimed["id"], status="FAILED", error="nope", result=None))[0] == 200
    done = await finish(waiting)
    assert done.code == 3, done.err
    assert done.json()["task"]["status"] == "FAILED"


# ------------------------------------------------------------ bulk create (item 10)


async def test_bulk_create_waits_out_429s_and_creates_every_line(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], api: Api, tmp_path: Path
) -> None:
    """Under a create rate limit, task create --file waits each Retry-After (saying so
    on stderr) and goes on: every line created, exit 0."""
    limited = await start_daemon(rate_limit_create_per_second=10, rate_limit_create_burst=10)
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"payload": {"n": i}}) + "\n" for i in range(25)))
    env = cli_env(limited, "producer", tmp_path)
    done = await finish(await start_cli(env, "task", "create", "RL", "--file", str(path), "--json"))
    assert done.code == 0, done.err
    created = [json.loads(line) for line in done.out.splitlines()]
    assert [json.loads(t["payload"])["n"] for t in created] == list(range(25))
    assert "rate limited (429): waiting 1s as the daemon asks" in done.err
    assert "created 25 of 25 tasks" in done.err
    assert (await queue_stats(Api(api.http, limited.url), "RL"))["ready"] == 25


# ------------------------------------------------------------ Unix socket (item 12)


@pytest.fixture
async def socket_daemon(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], socket_dir: Path
) -> AsyncIterator[str]:
    """A daemon that also listens on a Unix socket; its unix:// URL."""
    path = socket_dir / "codeq.sock"
    await start_daemon(unix_socket_path=str(path))
    yield f"unix://{path}"


async def test_cli_over_the_unix_socket(codeq: Cli, socket_daemon: str, tmp_path: Path) -> None:
    """--url unix:///path: create and get (plain connections), a worker (pooled), and
    the result, all over the socket, with the URL given before the subcommand too."""
    env = {"CODEQ_URL": ""}
    created = await codeq("--url", socket_daemon, "task", "create", "S", "--json", **env)
    assert created.code == 0, created.err
    task_id = created.json()["id"]
    worker = await codeq(
        "worker", "start", "--url", socket_daemon, "--events", "S", "--max-tasks", "1",
        "--handler", "echo '{\"over\": \"socket\"}'", who="worker", **env,
    )  # fmt: skip
    assert worker.code == 0, worker.err
    assert f"from {socket_daemon}" in worker.err
    result = await codeq("task", "result", task_id, "--url", socket_daemon, "--json", **env)
    assert result.code == 0, result.err
    assert result.json()["result"]["result"] == {"over": "socket"}
    missing = await codeq("task", "get", task_id, "--url", f"{socket_daemon}.nope", **env)
    assert missing.code == 1
    assert missing.err.strip() == (
        f"codeq: cannot reach {socket_daemon}.nope: no socket at "
        f"{socket_daemon.removeprefix('unix://')}.nope; is `codeq serve` running there?"
    )


@pytest.mark.parametrize("pooled", [True, False])
async def test_python_client_over_the_unix_socket(socket_daemon: str, pooled: bool) -> None:
    """Client("unix:///path") works with either way of connecting."""
    async with Client(socket_daemon, TOKENS["producer"][0], pooled=pooled) as client:
        task = await Producer(client).create("PY", {"n": 1})
        assert (await client.get(task["id"]))["status"] == "PENDING"


# ------------------------------------------------------------ flags and messages (item 13)


async def test_connection_flags_before_the_subcommand(codeq: Cli, api: Api) -> None:
    """`codeq --url URL --token T --json task get ID` works like flags after it; a
    connection flag on a daemon command is a usage error naming it."""
    task = await api.create("A")
    done = await codeq(
        "--url", codeq.daemon.url, "--token", TOKENS["producer"][0], "--json",
        "task", "get", task["id"], who=None, CODEQ_URL="",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert done.json()["id"] == task["id"]
    misplaced = await codeq("--url", codeq.daemon.url, "config", "check")
    assert misplaced.code == 2, misplaced.err
    assert "--url is not an option of `codeq config`" in misplaced.err


async def test_url_with_the_api_prefix_or_another_path(codeq: Cli, api: Api) -> None:
    """A --url ending in /v1/codeq works (the prefix is dropped); a path the daemon
    does not serve gets its 404 with a hint about the URL."""
    task = await api.create("A")
    prefixed = await codeq("task", "get", task["id"], "--url", codeq.daemon.url + "/v1/codeq/")
    assert prefixed.code == 0, prefixed.err
    wrong = await codeq("task", "get", task["id"], "--url", codeq.daemon.url + "/api")
    assert wrong.code == 1
    assert wrong.err.startswith("codeq: 404 Not Found (no such endpoint: is ")
    assert "the daemon's address, e.g. http://127.0.0.1:8080?)" in wrong.err


async def test_daemon_down_is_one_line_with_a_hint(codeq: Cli) -> None:
    """Nothing listening: one line, no aiohttp internals, and the question to ask."""
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("task", "get", "0123456789ab-aaaaaaaaaaaa"), ("queue", "inspect")):
        done = await codeq(*args, "--url", url, who="admin")
        assert done.code == 1
        assert done.err == (
            f"codeq: cannot reach {url}: connection refused; is `codeq serve` running there?\n"
        )


async def test_version_and_serve_help_defaults(codeq: Cli) -> None:
    """`codeq --version` prints the installed version; `serve --help` shows defaults."""
    shown = await codeq("--version", who=None)
    assert shown.code == 0 and shown.out == f"codeq {version('codeq')}\n"
    serve = await codeq("serve", "--help", who=None)
    assert serve.code == 0
    text = " ".join(serve.out.split())  # argparse wraps help lines
    assert "(default 8080; env PORT, yaml port)" in text
    assert "(default exp_full_jitter; env BACKOFF_POLICY" in text
    assert "(default true; env TCP_ENABLED" in text


# ------------------------------------------------------------ start-up cost (item 15)

HEAVY = ("codeq.daemon", "codeq.config", "redis", "uvloop", "jwcrypto", "aiohttp", "structlog")
IMPORTS_OF = """
import sys
from codeq.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
loaded = sorted(m for m in {heavy} if m in sys.modules)
print("LOADED", " ".join(loaded), file=sys.stderr)
sys.exit(code)
"""


async def imports_of(env: dict[str, str], *args: str) -> tuple[Done, list[str]]:
    """Runs `codeq ARGS` in a fresh interpreter; its outcome and the heavy modules loaded."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IMPORTS_OF.format(heavy=HEAVY), *args, env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    done = await finish(proc)
    last = done.err.strip().splitlines()[-1]
    assert last.startswith("LOADED"), done.err
    return done, last.split()[1:]


async def test_client_commands_do_not_import_the_daemon(
    codeq: Cli, api: Api, tmp_path: Path
) -> None:
    """`task get --help` and a real `task get` (table and --json) load none of the
    daemon's modules, the store client, uvloop, the JWT crypto, structlog or aiohttp."""
    task = await api.create("A")
    env = cli_env(codeq.daemon, "producer", tmp_path)
    for args in (
        ("task", "get", "--help"),
        ("task", "get", task["id"]),
        ("task", "get", task["id"], "--json"),
        ("queue", "inspect", "--json", "--token", TOKENS["admin"][0]),
    ):
        done, loaded = await imports_of(env, *args)
        assert done.code == 0, (args, done.err)
        assert loaded == [], args
