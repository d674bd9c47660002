"""The store client on both real servers (SPEC §2, §10): the protocol the server
speaks, the server named at start, servers codeq cannot use refused, and the
faults a production store has (SIGKILL and restart, SIGSTOP) survived."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    NO_KVROCKS,
    REPO,
    STORES,
    Api,
    KvrocksProcess,
    ServeProcess,
    StoreProcess,
    free_port,
    kvrocks_binary,
    start_store,
    subprocess_env,
    wait_for,
)
from structlog.testing import capture_logs

from codeq.config import Config
from codeq.store.client import ServerInfo, StoreRejected, check_server, open_client

TASKS = "/v1/codeq/tasks"


# ------------------------------------------------------------ the protocol


async def test_the_server_is_named_and_spoken_to_in_resp2(
    store_url: str, store_server: Any
) -> None:
    """open_client says which server it found and speaks RESP2 by default."""
    client, server = await open_client(
        store_url, password=None, connect_timeout=2, max_connections=2
    )
    try:
        assert server.product == store_server.kind
        assert server.protocol == 2
        assert re.match(r"\d+\.\d+", server.version), server
        if server.product == "kvrocks":
            assert server.redis_version == "4.0.0" and server.version.startswith("2.")
        await client.hset("cq-test:h", mapping={"a": "1"})
        assert await client.hgetall("cq-test:h") == {"a": "1"}
    finally:
        await client.aclose()


async def test_resp3_is_used_only_where_the_server_speaks_it(
    store_url: str, store_server: Any
) -> None:
    """`?protocol=3`: RESP3 on Redis; KVRocks answers HELLO 3 with proto 2, so codeq
    falls back to RESP2 with a warning, and replies keep their shape either way."""
    with capture_logs() as logs:
        client, server = await open_client(
            store_url + "?protocol=3", password=None, connect_timeout=2, max_connections=2
        )
    try:
        expected = 3 if store_server.kind == "redis" else 2
        assert server.protocol == expected
        warned = [e for e in logs if e["event"] == "store does not speak RESP3; using RESP2"]
        assert bool(warned) == (expected == 2), logs
        await client.hset("cq-test:h", mapping={"a": "1"})
        assert await client.hgetall("cq-test:h") == {"a": "1"}
    finally:
        await client.aclose()


async def test_every_read_has_the_same_shape_in_both_protocols(
    store_url: str, daemons_on: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """A daemon on `?protocol=3` answers every read exactly like one on RESP2."""
    loopback = {"webhook_allowed_hosts": ("127.0.0.1",)}
    resp2 = Api(http, (await daemons_on(store_url, **loopback)).url)
    resp3 = Api(http, (await daemons_on(store_url + "?protocol=3", **loopback)).url)
    task = await resp2.create("SHAPE", payload={"n": 1}, webhook="http://127.0.0.1:1/cb")
    claimed = await resp2.claim(commands=["SHAPE"])
    assert claimed["id"] == task["id"]
    assert (await resp2.result(task["id"]))[0] == 200
    reads = [
        ("GET", f"{TASKS}/{task['id']}", "producer"),
        ("GET", f"{TASKS}/{task['id']}/result", "producer"),
        ("GET", f"{TASKS}/{task['id']}/history", "producer"),
        ("GET", "/v1/codeq/admin/queues", "admin"),
        ("GET", "/v1/codeq/admin/queues/SHAPE", "admin"),
        ("GET", "/v1/codeq/admin/queues/SHAPE/dlq", "admin"),
    ]
    for method, path, who in reads:
        two, three = await resp2.call(method, path, who), await resp3.call(method, path, who)
        assert two[0] == three[0] == 200, (path, two, three)
        assert two[1] == three[1], path


def test_protocol_in_the_address_must_be_2_or_3() -> None:
    """A bad `protocol` in REDIS_ADDR stops the start, naming the setting."""
    from codeq import config as cfg

    with pytest.raises(cfg.ConfigError, match="protocol must be 2 or 3"):
        cfg.load_config(None, environ={"REDIS_ADDR": "redis://127.0.0.1:6379/0?protocol=4"})


# ------------------------------------------------------------ refusing a server


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (ServerInfo("redis", "5.0.14", "5.0.14", "standalone", 2), "needs Redis 6.2 or newer"),
        (ServerInfo("kvrocks", "2.8.0", "4.0.0", "standalone", 2), "needs KVRocks 2.10"),
        (ServerInfo("redis", "7.2.4", "7.2.4", "cluster", 2), "does not run on a cluster"),
    ],
)
def test_servers_codeq_cannot_use_are_refused(server: ServerInfo, message: str) -> None:
    """Too old or a cluster node: refused with a message naming the server and why."""
    with pytest.raises(StoreRejected, match=message) as refused:
        check_server(server)
    assert server.version in str(refused.value)


def test_supported_servers_pass_the_check() -> None:
    """Redis 6.2 and 7, KVRocks 2.10 and later, and unreleased builds are accepted."""
    for server in (
        ServerInfo("redis", "6.2.0", "6.2.0", "standalone", 2),
        ServerInfo("redis", "7.0.15", "7.0.15", "standalone", 3),
        ServerInfo("kvrocks", "2.10.1", "4.0.0", "standalone", 2),
        ServerInfo("kvrocks", "unstable", "4.0.0", "standalone", 2),
    ):
        check_server(server)


@pytest.fixture
def kvrocks_cluster_node() -> Iterator[StoreProcess]:
    """A real KVRocks started in cluster mode (no slots assigned)."""
    binary = kvrocks_binary()
    if binary is None:
        pytest.skip(NO_KVROCKS)
    with tempfile.TemporaryDirectory(prefix="cq-kvc-") as data:
        node = KvrocksProcess(binary, free_port(), Path(data), extra={"cluster-enabled": "yes"})
        yield node
        node.stop()


async def test_serve_refuses_a_kvrocks_cluster_node_in_one_line(
    kvrocks_cluster_node: StoreProcess, serve: Callable[..., ServeProcess]
) -> None:
    """`codeq serve` on a KVRocks cluster node exits 1 with one log line naming the
    server, and no traceback."""
    child = serve(REDIS_ADDR=kvrocks_cluster_node.url)
    assert await child.exited(timeout=20) == 1
    refused = child.events("cannot start")
    assert len(refused) == 1, child.log_text()
    assert "KVRocks 2.10" in refused[0]["error"] and "cluster" in refused[0]["error"]
    assert "Traceback" not in child.log_text()


# ------------------------------------------------------------ codeq config check --store


def _config_check(*env: tuple[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codeq", "config", "check", "--store"],
        env=subprocess_env(**dict(env)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_config_check_names_the_store(store_url: str, store_server: Any) -> None:
    """`codeq config check --store` prints the server, version and protocol."""
    done = await asyncio.to_thread(_config_check, ("REDIS_ADDR", store_url))
    assert done.returncode == 0, done.stderr
    name = "KVRocks 2." if store_server.kind == "kvrocks" else "Redis "
    assert f"store: {name}" in done.stdout and "RESP2" in done.stdout, done.stdout


async def test_config_check_of_an_unreachable_store_fails() -> None:
    """Nothing listening: exit 1 and one line saying so."""
    done = await asyncio.to_thread(
        _config_check, ("REDIS_ADDR", f"127.0.0.1:{free_port()}"), ("STORE_TIMEOUT_SECONDS", "1")
    )
    assert done.returncode == 1
    assert done.stderr.startswith("store: unreachable"), done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------ faults


@pytest.fixture(params=STORES)
def durable_store(request: pytest.FixtureRequest) -> Iterator[StoreProcess]:
    """A store of each kind that keeps every acknowledged write across SIGKILL
    (Redis: AOF; KVRocks: its WAL, config/kvrocks.conf as shipped, sync no)."""
    with tempfile.TemporaryDirectory(prefix="cq-durable-") as data:
        server = start_store(request.param, Path(data), durable=True)
        yield server
        server.stop()


async def test_store_killed_under_load_loses_no_accepted_task(
    durable_store: StoreProcess, daemons_on: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """SIGKILL of the store while 16 producers create tasks, then a restart on the
    same data: no 500 ever, every 202 task is still there, and the daemon serves
    again (creates and claims) by itself."""
    daemon = await daemons_on(durable_store.url, store_timeout_seconds=1.0)
    api = Api(http, daemon.url)
    accepted: list[str] = []
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def produce(n: int) -> None:
        while not stop.is_set():
            status, body, _ = await api.call(
                "POST", TASKS, "producer", {"command": "LOAD", "payload": {}}
            )
            statuses[status] += 1
            if status == 202:
                accepted.append(body["id"])
            else:
                assert status == 503, (status, body)
                await asyncio.sleep(0.02)  # a client's retry pause, not a synchronisation

    producers = [asyncio.create_task(produce(n)) for n in range(16)]
    try:
        await wait_for(lambda: len(accepted) >= 300, timeout=30, message="300 accepted")
        durable_store.kill()
        await wait_for(lambda: statuses[503] >= 16, timeout=10, message="503s while down")
        durable_store.start()
        restarted, resumed = asyncio.get_running_loop().time(), len(accepted)
        await wait_for(lambda: len(accepted) > resumed, timeout=30, message="a create again")
        recovered_in = asyncio.get_running_loop().time() - restarted
        await wait_for(lambda: len(accepted) >= resumed + 300, timeout=30, message="creates again")
    finally:
        stop.set()
        await asyncio.gather(*producers)
    assert set(statuses) <= {202, 503}, statuses
    assert len(set(accepted)) == len(accepted)

    missing = []
    for task_id in accepted:
        status, _ = await api.get(task_id)
        if status != 200:
            missing.append((task_id, status))
    assert not missing, f"{len(missing)} of {len(accepted)} accepted tasks lost: {missing[:5]}"

    print(  # the figures of the README's "Faults" (pytest -s)
        f"\n{durable_store.kind}: {len(accepted)} accepted, {statuses[503]} answered 503 while"
        f" down, 0 lost, serving {recovered_in * 1000:.0f} ms after the restart,"
        f" statuses {dict(statuses)}"
    )
    created = await api.create("AFTER")
    claimed = await api.claim(commands=["AFTER"], waitSeconds=5)
    assert claimed is not None and claimed["id"] == created["id"]
    status, report, _ = await api.call("GET", "/readyz", None)
    assert status == 200, report


async def test_frozen_store_answers_503_within_a_second_and_recovers(
    own_store: StoreProcess, daemons_on: Callable[..., Any], http: aiohttp.ClientSession
) -> None:
    """SIGSTOP of the store: creates, claims and reads answer 503 within 1 s with the
    default configuration, never hang; after SIGCONT the same daemon serves again, a parked
    long-poll claim included. (A call that timed out may still run once the store
    thaws: a timeout is never retried, and no task is lost.)"""
    daemon = await daemons_on(own_store.url)
    timeout = daemon.daemon.config.store_timeout_seconds
    assert timeout == Config().store_timeout_seconds
    api = Api(http, daemon.url)
    task = await api.create("FROZEN")
    own_store.freeze()
    try:
        for method, path, who, body in (
            ("POST", TASKS, "producer", {"command": "FROZEN", "payload": {}}),
            ("POST", f"{TASKS}/claim", "worker", {"commands": ["OTHER"], "waitSeconds": 0}),
            ("GET", f"{TASKS}/{task['id']}", "producer", None),
        ):
            started = asyncio.get_running_loop().time()
            status, answer, _ = await api.call(method, path, who, body)
            elapsed = asyncio.get_running_loop().time() - started
            assert status == 503, (path, answer)
            assert f"did not answer within {timeout:g}s" in answer["error"], answer
            assert elapsed < 1.0, f"{path} took {elapsed:.2f}s"
    finally:
        own_store.thaw()

    async def serves() -> bool:
        return (await api.get(task["id"]))[0] == 200

    await wait_for(serves, timeout=10, message="the store back")
    parked = asyncio.create_task(api.claim(commands=["LATE"], waitSeconds=10))
    late = await api.create("LATE")
    claimed = await parked
    assert claimed is not None and claimed["id"] == late["id"]


# ------------------------------------------------------------ the README on each store


def _walkthrough() -> str:
    """The README's curl walkthrough, as bash."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A walkthrough with curl", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


async def test_readme_walkthrough_works_verbatim(
    store_url: str,
    serve: Callable[..., ServeProcess],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The README's curl walkthrough, run by bash against `codeq serve` with
    REDIS_ADDR set to each store (only the port differs: 8080 may be taken)."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    child = serve(REDIS_ADDR=store_url, PORT=str(port), HOME=str(home))
    await child.ready(http)
    script = _walkthrough().replace("localhost:8080", f"localhost:{port}")
    script = script.replace("/tmp/claimed.json", str(tmp_path / "claimed.json"))
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 5, done.stdout
    assert '"status":"COMPLETED"' in lines[3].replace(" ", ""), lines[3]
    assert "completed" in lines[4], lines[4]
