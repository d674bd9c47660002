"""The `codeq` client commands (task, queue, worker) as subprocesses against a real
in-process daemon: output (tables and --json), exit codes, profiles, and the
shell-handler worker end to end (results, nacks, heartbeats, graceful stop)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKENS, Api, RunningDaemon, subprocess_env, wait_for
from redis.asyncio import Redis

from codeq.store import keys

# A handler: doubles payload.n; payload.fail makes it exit 3 with "boom" on stderr.
DOUBLER = """
import json, sys
task = json.load(sys.stdin)
payload = json.loads(task["payload"])
if payload.get("fail"):
    sys.stderr.write("boom\\n")
    sys.exit(3)
print(json.dumps({"n": payload["n"] * 2, "id": task["id"]}))
"""


@dataclass
class Done:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli_env(
    daemon: RunningDaemon | None, who: str | None, tmp: Path, **extra: str
) -> dict[str, str]:
    """The environment of a CLI run: the daemon's URL and a test token, and a
    profile file and state directory that exist only for this test."""
    env = {k: v for k, v in subprocess_env().items() if not k.startswith(("CODEQ_", "STATE_DIR"))}
    env.update(CODEQ_CONFIG=str(tmp / "no-profiles.yaml"), STATE_DIR=str(tmp / "state"))
    if daemon is not None:
        env["CODEQ_URL"] = daemon.url
    if who is not None:
        env["CODEQ_TOKEN"] = TOKENS[who][0]
    env.update(extra)
    return env


async def start_cli(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "codeq",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process, stdin: str = "", timeout: float = 30) -> Done:
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


class Cli:
    """Runs `codeq ARGS` as `who` (a conftest.TOKENS name) against the test daemon."""

    def __init__(self, daemon: RunningDaemon, tmp: Path) -> None:
        self.daemon = daemon
        self.tmp = tmp

    async def start(self, *args: str, who: str | None = "producer", **env: str) -> Any:
        return await start_cli(cli_env(self.daemon, who, self.tmp, **env), *args)

    async def __call__(
        self, *args: str, who: str | None = "producer", stdin: str = "", **env: str
    ) -> Done:
        return await finish(await self.start(*args, who=who, **env), stdin)


@pytest.fixture
def codeq(daemon: RunningDaemon, tmp_path: Path) -> Cli:
    return Cli(daemon, tmp_path)


async def history_events(api: Api, task_id: str) -> list[dict[str, Any]]:
    status, body, _ = await api.call("GET", f"/v1/codeq/tasks/{task_id}/history", "producer")
    assert status == 200, body
    return list(body["history"])


async def dead_letter(api: Api, command: str, reason: str) -> str:
    task = await api.create(command, maxAttempts=1)
    claimed = await api.claim(commands=[command])
    assert claimed["id"] == task["id"]
    status, body, _ = await api.call(
        "POST", f"/v1/codeq/tasks/{task['id']}/nack", "worker", {"reason": reason}
    )
    assert status == 200 and body["status"] == "dlq", body
    return str(task["id"])


async def queue_stats(api: Api, command: str) -> dict[str, Any]:
    status, body, _ = await api.call("GET", f"/v1/codeq/admin/queues/{command}", "admin")
    assert status == 200, body
    return dict(body)


# ------------------------------------------------------------ task


async def test_task_create_get_result_round_trip(codeq: Cli, api: Api) -> None:
    """task create/get/result --json show the API's objects; result --wait waits for the end."""
    created = await codeq(
        "task", "create", "A", "--payload", '{"k":1}', "--priority", "4",
        "--idempotency-key", "idem-1", "--max-attempts", "3", "--json",
    )  # fmt: skip
    assert created.code == 0, created.err
    task = created.json()
    assert (task["command"], task["priority"], task["maxAttempts"]) == ("A", 4, 3)
    assert json.loads(task["payload"]) == {"k": 1} and task["idempotencyKey"] == "idem-1"

    got = await codeq("task", "get", task["id"], "--json")
    assert got.code == 0 and got.json()["id"] == task["id"] and got.json()["status"] == "PENDING"

    waiting = await codeq.start("task", "result", task["id"], "--wait", "20", "--json")
    claimed = await api.claim(commands=["A"])
    status, _ = await api.result(claimed["id"], result={"answer": 42})
    assert status == 200
    done = await finish(waiting)
    assert done.code == 0, done.err
    assert done.json()["task"]["status"] == "COMPLETED"
    assert done.json()["result"]["result"] == {"answer": 42}


async def test_task_result_wait_times_out(codeq: Cli, api: Api) -> None:
    """task result --wait exits 1 when the task has not ended in time."""
    task = await api.create("A")
    done = await codeq("task", "result", task["id"], "--wait", "0.3")
    assert done.code == 1 and "still PENDING" in done.err


async def test_task_cancel(codeq: Cli, api: Api) -> None:
    """task cancel ends a pending task CANCELLED and keeps the reason in its history."""
    task = await api.create("A")
    done = await codeq("task", "cancel", task["id"], "--reason", "not needed", "--json")
    assert done.code == 0, done.err
    assert done.json()["status"] == "CANCELLED"
    events = await history_events(api, task["id"])
    assert any(e["event"] == "cancelled" and "not needed" in json.dumps(e) for e in events)


async def test_bulk_create_from_jsonl(codeq: Cli, api: Api, tmp_path: Path) -> None:
    """task create --file makes one task per line, reports a refused line and exits 1."""
    lines = [json.dumps({"payload": {"n": i}, "priority": i % 10}) for i in range(60)]
    lines.insert(10, "")  # blank lines are skipped
    lines.append(json.dumps({"command": "bad command!", "payload": {}}))
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n")
    done = await codeq("task", "create", "BULK", "--file", str(path), "--json")
    assert done.code == 1
    outcomes = [json.loads(line) for line in done.out.splitlines()]
    assert len(outcomes) == 61
    assert [json.loads(t["payload"])["n"] for t in outcomes[:60]] == list(range(60))
    assert outcomes[60]["status"] == 400 and outcomes[60]["line"] == 62
    assert "created 60 of 61 tasks" in done.err
    assert (await queue_stats(api, "BULK"))["ready"] == 60


async def test_unknown_task_and_bad_input(codeq: Cli) -> None:
    """An unknown task id is one error line and exit 1; bad --payload JSON is exit 2."""
    missing = await codeq("task", "get", "0123456789ab-aaaaaaaaaaaa")
    assert missing.code == 1 and missing.err.strip() == "codeq: 404 task not found"
    assert missing.out == ""
    bad = await codeq("task", "create", "A", "--payload", "{nope")
    assert bad.code == 2 and "--payload is not valid JSON" in bad.err


async def test_bad_token_is_one_line_and_not_printed(codeq: Cli) -> None:
    """A refused token gets the 401 in one line; the token itself is never printed."""
    secret = "a-wrong-token-that-must-not-leak"
    done = await codeq("task", "get", "0123456789ab-aaaaaaaaaaaa", who=None, CODEQ_TOKEN=secret)
    assert done.code == 1 and done.err.startswith("codeq: 401")
    assert secret not in done.err + done.out


# ------------------------------------------------------------ queue


async def test_queue_inspect_table_and_json_match_admin_api(codeq: Cli, api: Api) -> None:
    """queue inspect --json is the admin API's answer; the table shows the same counts."""
    for _ in range(3):
        await api.create("A")
    await api.create("A", delaySeconds=600)
    await api.create("B")
    await api.claim(commands=["B"])
    status, expected, _ = await api.call("GET", "/v1/codeq/admin/queues", "admin")
    assert status == 200

    as_json = await codeq("queue", "inspect", "--json", who="admin")
    assert as_json.code == 0 and as_json.json() == expected
    one = await codeq("queue", "inspect", "A", "--json", who="admin")
    assert one.json() == await queue_stats(api, "A")

    table = await codeq("queue", "inspect", who="admin")
    rows = [line.split() for line in table.out.splitlines()]
    assert rows[0] == ["command", "ready", "delayed", "in", "progress", "dlq", "paused"]
    assert ["A", "3", "1", "0", "0", "no"] in rows and ["B", "0", "0", "1", "0", "no"] in rows


async def test_queue_pause_resume_purge(codeq: Cli, api: Api) -> None:
    """pause stops claims, resume lets them go on, purge --yes deletes ready and delayed
    tasks, and purge without --yes off a terminal refuses."""
    paused = await codeq("queue", "pause", "A", "--json", who="admin")
    assert paused.code == 0 and paused.json() == {"command": "A", "paused": True}
    await api.create("A")
    assert await api.claim(commands=["A"]) is None
    resumed = await codeq("queue", "resume", "A", who="admin")
    assert resumed.code == 0 and "A resumed" in resumed.out
    assert (await queue_stats(api, "A"))["paused"] is False

    await api.create("A", delaySeconds=600)
    refused = await codeq("queue", "purge", "A", who="admin")
    assert refused.code == 2 and "--yes" in refused.err
    assert (await queue_stats(api, "A"))["ready"] == 1
    purged = await codeq("queue", "purge", "A", "--yes", "--json", who="admin")
    assert purged.code == 0 and purged.json() == {"purged": 2}
    stats = await queue_stats(api, "A")
    assert (stats["ready"], stats["delayed"]) == (0, 0)


async def test_dlq_listing_and_redrive(codeq: Cli, api: Api) -> None:
    """queue dlq filters and pages; redrive --dry-run changes nothing; redrive moves."""
    timeouts = [await dead_letter(api, "A", f"timeout {i}") for i in range(2)]
    await dead_letter(api, "A", "out of memory")

    listed = await codeq("queue", "dlq", "A", "--error", "TIMEOUT", "--json", who="admin")
    assert [t["id"] for t in listed.json()["tasks"]] == timeouts
    paged = await codeq("queue", "dlq", "A", "--limit", "1", "--all", "--json", who="admin")
    assert len(paged.json()["tasks"]) == 3 and paged.json()["nextCursor"] is None
    table = await codeq("queue", "dlq", "A", who="admin")
    assert "out of memory" in table.out and "3 dead-lettered task(s)" in table.err

    args = ("queue", "redrive", "A", "--error", "timeout")
    dry = await codeq(*args, "--dry-run", "--json", who="admin")
    assert dry.code == 0 and dry.json()["dryRun"] is True and dry.json()["ids"] == timeouts
    assert (await queue_stats(api, "A"))["dlq"] == 3

    moved = await codeq(*args, "--rate", "50", "--json", who="admin")
    assert moved.code == 0 and moved.json()["redriven"] == 2
    stats = await queue_stats(api, "A")
    assert (stats["dlq"], stats["ready"]) == (1, 2)


# ------------------------------------------------------------ worker


async def test_worker_processes_100_tasks_with_a_shell_handler(
    codeq: Cli, api: Api, tmp_path: Path
) -> None:
    """worker start runs the handler per task: stdout JSON becomes the result; a
    failing handler's task is nacked with stderr's tail as the reason."""
    tasks = [await api.create("W", payload={"n": i}) for i in range(90)]
    failing = [await api.create("W", payload={"fail": True}, maxAttempts=1) for _ in range(10)]
    handler = tmp_path / "handler.py"
    handler.write_text(DOUBLER)
    done = await codeq(
        "worker", "start", "--events", "W", "--concurrency", "8",
        "--handler", f"{sys.executable} {handler}",
        "--max-tasks", "100", "--poll", "1", "--json", who="worker",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert done.json()["completed"] == 90 and done.json()["nacked"] == 10

    for i, task in enumerate(tasks):
        _, body, _ = await api.call("GET", f"/v1/codeq/tasks/{task['id']}/result", "producer")
        assert body["task"]["status"] == "COMPLETED"
        assert body["result"]["result"] == {"n": 2 * i, "id": task["id"]}
    for task in failing:
        _, got = await api.get(task["id"])
        assert got["status"] == "FAILED" and got["attempts"] == 1
        assert got["lastError"] == "exit 3: boom"
        events = await history_events(api, task["id"])
        nacks = [e for e in events if e["event"] == "nacked"]
        assert len(nacks) == 1 and nacks[0]["reason"] == "exit 3: boom"


async def test_worker_heartbeats_keep_a_long_handler_lease(codeq: Cli, api: Api) -> None:
    """A handler running longer than the lease keeps it by heartbeats: one claim, no
    expiry, completed once."""
    task = await api.create("SLOW")
    started = time.monotonic()
    done = await codeq(
        "worker", "start", "--events", "SLOW", "--lease", "2", "--max-tasks", "1",
        "--handler", "sleep 3; echo '{\"slept\": true}'", who="worker",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert time.monotonic() - started >= 3
    _, body, _ = await api.call("GET", f"/v1/codeq/tasks/{task['id']}/result", "producer")
    assert body["task"]["status"] == "COMPLETED" and body["result"]["result"] == {"slept": True}
    events = [e["event"] for e in await history_events(api, task["id"])]
    assert events.count("claimed") == 1 and "lease_expired" not in events


async def test_worker_sigint_lets_running_handler_finish(codeq: Cli, api: Api) -> None:
    """SIGINT: no new claims, the running handler finishes within --grace, exit 0."""
    first = await api.create("G")
    worker = await codeq.start(
        "worker", "start", "--events", "G", "--poll", "1", "--grace", "20",
        "--handler", "sleep 1; echo '{}'", who="worker",
    )  # fmt: skip
    await wait_for(
        lambda: _status_is(api, first["id"], "IN_PROGRESS"), timeout=15, message="claimed"
    )
    second = await api.create("G")
    worker.send_signal(signal.SIGINT)
    done = await finish(worker)
    assert done.code == 0, done.err
    assert (await api.get(first["id"]))[1]["status"] == "COMPLETED"
    assert (await api.get(second["id"]))[1]["status"] == "PENDING"


async def test_worker_sigint_past_grace_abandons(codeq: Cli, api: Api) -> None:
    """SIGINT with a handler outliving --grace: the handler is killed, its task abandoned."""
    task = await api.create("G")
    worker = await codeq.start(
        "worker", "start", "--events", "G", "--poll", "1", "--grace", "0.5",
        "--handler", "sleep 30", who="worker",
    )  # fmt: skip
    await wait_for(lambda: _status_is(api, task["id"], "IN_PROGRESS"), timeout=15)
    worker.send_signal(signal.SIGINT)
    done = await finish(worker, timeout=15)
    assert done.code == 0, done.err
    got = (await api.get(task["id"]))[1]
    assert got["status"] == "PENDING"
    assert "abandoned" in [e["event"] for e in await history_events(api, task["id"])]


async def test_worker_stops_handler_of_cancelled_task(codeq: Cli, api: Api) -> None:
    """A task cancelled while its handler runs: the next heartbeat stops the handler and
    the task ends CANCELLED, not retried."""
    task = await api.create("G")
    worker = await codeq.start(
        "worker", "start", "--events", "G", "--poll", "1", "--lease", "1",
        "--handler", "sleep 30", who="worker",
    )  # fmt: skip
    await wait_for(lambda: _status_is(api, task["id"], "IN_PROGRESS"), timeout=15)
    status, body, _ = await api.call("POST", f"/v1/codeq/tasks/{task['id']}/cancel", "producer")
    assert status == 202, body
    await wait_for(lambda: _status_is(api, task["id"], "CANCELLED"), timeout=10)
    worker.send_signal(signal.SIGINT)
    done = await finish(worker, timeout=15)
    assert done.code == 0 and "cancelled" in done.err


async def _status_is(api: Api, task_id: str, status: str) -> bool:
    return bool((await api.get(task_id))[1]["status"] == status)


# ------------------------------------------------------------ connection settings


async def test_profile_file_and_precedence(codeq: Cli, api: Api, tmp_path: Path) -> None:
    """The profile file is used when nothing else is given; env beats it, flags beat env."""
    task = await api.create("A")
    profiles = tmp_path / "config.yaml"
    profiles.write_text(
        json.dumps(
            {
                "currentProfile": "dev",
                "profiles": {
                    "dev": {"baseUrl": codeq.daemon.url, "producerToken": TOKENS["producer"][0]},
                    "dead": {"url": "http://127.0.0.1:9", "token": "x" * 20},
                },
            }
        )
    )
    env = cli_env(None, None, tmp_path, CODEQ_CONFIG=str(profiles))
    get = ("task", "get", task["id"])

    from_profile = await finish(await start_cli(env, *get))
    assert from_profile.code == 0, from_profile.err

    other = await finish(await start_cli(env, *get, "--profile", "dead"))
    assert other.code == 1 and "cannot reach http://127.0.0.1:9" in other.err

    env_token = await finish(await start_cli({**env, "CODEQ_TOKEN": "w" * 20}, *get))
    assert env_token.code == 1 and "401" in env_token.err

    flags = ("--url", codeq.daemon.url, "--token", TOKENS["producer"][0])
    flag_wins = await finish(
        await start_cli({**env, "CODEQ_PROFILE": "dead", "CODEQ_TOKEN": "w" * 20}, *get, *flags)
    )
    assert flag_wins.code == 0, flag_wins.err

    unknown = await finish(await start_cli(env, *get, "--profile", "nope"))
    assert unknown.code == 2 and "no profile 'nope'" in unknown.err


async def test_help_has_examples(codeq: Cli) -> None:
    """Every client command answers --help with an examples epilog."""
    for args in (
        ("task", "create"), ("task", "result"), ("worker", "start"),
        ("queue", "inspect"), ("queue", "redrive"), ("queue", "dlq"),
    ):  # fmt: skip
        done = await codeq(*args, "--help")
        assert done.code == 0 and "examples:" in done.out, args


# ------------------------------------------------------------ codeQ's CLI spellings


async def test_codeq_task_create_flags(codeq: Cli, api: Api) -> None:
    """codeQ's `task create --event X --delay-seconds N --webhook --run-at` work."""
    done = await codeq(
        "task", "create", "--event", "CQ", "--delay-seconds", "60", "--json",
    )  # fmt: skip
    assert done.code == 0, done.err
    task = done.json()
    assert task["command"] == "CQ" and task["status"] == "PENDING"
    assert (await queue_stats(api, "CQ"))["delayed"] == 1
    clash = await codeq("task", "create", "A", "--event", "B")
    assert clash.code == 2 and "differ" in clash.err
    assert (await queue_stats(api, "A"))["ready"] == 0


async def test_codeq_worker_ack_nack_with_delay(codeq: Cli, api: Api, redis: Redis) -> None:
    """`worker start --ack nack --nack-delay 60 --wait-seconds 1 --lease-seconds 30`:
    the handler's task is nacked and delayed by 60 s, not completed."""
    task = await api.create("ACKN")
    done = await codeq(
        "worker", "start", "--events", "ACKN", "--handler", "true", "--ack", "nack",
        "--nack-delay", "60", "--wait-seconds", "1", "--lease-seconds", "30",
        "--max-tasks", "1", "--json", who="worker",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert done.json()["nacked"] == 1
    _, got = await api.get(task["id"])
    assert got["status"] == "PENDING" and got["attempts"] == 1
    assert (await queue_stats(api, "ACKN"))["delayed"] == 1
    nacks = [e for e in await history_events(api, task["id"]) if e["event"] == "nacked"]
    assert [e["reason"] for e in nacks] == ["--ack nack"], nacks
    visible_at = await redis.zscore(keys.delayed(keys.tenant_tag("acme"), "ACKN"), task["id"])
    assert 55_000 < visible_at - time.time() * 1000 <= 60_000, visible_at


async def test_codeq_worker_ack_none_leaves_the_lease(codeq: Cli, api: Api) -> None:
    """`--ack none` reports nothing: the task stays IN_PROGRESS under the worker's
    lease until it runs out."""
    task = await api.create("ACK0")
    done = await codeq(
        "worker", "start", "--events", "ACK0", "--handler", "true", "--ack", "none",
        "--lease-seconds", "60", "--max-tasks", "1", "--json", who="worker",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert done.json()["left"] == 1, done.out + done.err
    _, got = await api.get(task["id"])
    assert got["status"] == "IN_PROGRESS" and got["workerId"] == "worker-1"


async def test_worker_handler_that_ignores_a_large_stdin_succeeds(codeq: Cli, api: Api) -> None:
    """A handler that exits 0 without reading a 256 KiB task from its stdin completes
    the task: EPIPE on stdin is normal, no traceback."""
    task = await api.create("BIG", payload={"blob": "x" * 262_144})
    done = await codeq(
        "worker", "start", "--events", "BIG", "--handler", "echo '{}'",
        "--max-tasks", "1", "--json", who="worker",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert done.json()["completed"] == 1, done.err
    assert "Traceback" not in done.err
    _, got = await api.get(task["id"])
    assert got["status"] == "COMPLETED"


async def test_init_writes_a_private_profile_the_commands_use(codeq: Cli, tmp_path: Path) -> None:
    """`codeq init --base-url URL --producer-token -` writes ~/.codeq/config.yaml mode
    0600 (folder 0700), and `task create` then uses that profile's URL and token."""
    profiles = tmp_path / "home" / ".codeq" / "config.yaml"
    env = {"CODEQ_CONFIG": str(profiles), "CODEQ_URL": ""}
    token = TOKENS["producer"][0]
    done = await codeq(
        "init", "--base-url", codeq.daemon.url, "--producer-token", "-",
        who=None, stdin=token + "\n", **env,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert profiles.stat().st_mode & 0o777 == 0o600
    assert profiles.parent.stat().st_mode & 0o777 == 0o700
    assert token not in done.out + done.err
    created = await codeq("task", "create", "PROFILED", "--json", who=None, **env)
    assert created.code == 0, created.err
    assert created.json()["tenantId"] == "acme"
    again = await codeq("init", who=None, **env)
    assert again.code == 2 and "exists" in again.err


async def test_auth_set_show_clear(codeq: Cli, tmp_path: Path) -> None:
    """`auth set` stores tokens in the profile, `auth show` masks them (first 4
    characters and the length), `auth clear --worker` removes only that one."""
    env = {"CODEQ_CONFIG": str(tmp_path / "profiles.yaml")}
    worker, producer = TOKENS["worker"][0], TOKENS["producer"][0]
    done = await codeq("auth", "set", "--worker", worker, "--producer", producer, who=None, **env)
    assert done.code == 0, done.err
    shown = await codeq("auth", "show", who=None, **env)
    assert shown.code == 0, shown.err
    assert worker not in shown.out and producer not in shown.out
    assert f"workerToken: {worker[:4]}… ({len(worker)} characters)" in shown.out
    cleared = await codeq("auth", "clear", "--worker", who=None, **env)
    assert cleared.code == 0, cleared.err
    shown = await codeq("auth", "show", who=None, **env)
    assert "workerToken" not in shown.out and "producerToken" in shown.out
    assert (tmp_path / "profiles.yaml").stat().st_mode & 0o777 == 0o600
    empty = await codeq("auth", "set", who=None, **env)
    assert empty.code == 2 and "give --producer" in empty.err
