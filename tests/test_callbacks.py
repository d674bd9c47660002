"""Result callbacks end to end: real daemons, a real store, real aiohttp receivers.

Signing, retries after 500s and timeouts, abandonment, dead-letter callbacks, a
SIGKILLed daemon's pending retry, 1,000 tasks against a flapping receiver, the
per-host circuit breaker and the outbound URL guard."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from conftest import (
    TOKENS,
    Api,
    LoopbackServer,
    RunningDaemon,
    free_port,
    serve_command,
    stop_process,
    subprocess_env,
    wait_for,
)
from multidict import CIMultiDict
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from codeq.store import keys
from codeq.webhooks import verify_signature

ACME = keys.tenant_tag("acme")
TASKS = "/v1/codeq/tasks"
ADMIN_CALLBACKS = "/v1/codeq/admin/callbacks"
SECRET = "callback-test-secret"
TRACE_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# Fast retries for in-process daemons; loopback receivers let through the guard.
FAST = {
    "webhook_allowed_hosts": ("127.0.0.1",),
    "result_webhook_base_backoff_seconds": 0.05,
    "result_webhook_max_backoff_seconds": 0.2,
    "result_webhook_timeout_seconds": 0.5,
}

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


# ------------------------------------------------------------ receivers


@dataclass(slots=True)
class Received:
    """One request a receiver got, and what it was scripted to answer."""

    path: str
    headers: CIMultiDict[str]
    body: bytes
    json: Any
    action: str  # ok | 500 | hang
    at: float  # time.monotonic() on arrival

    @property
    def callback_id(self) -> str:
        return self.headers.get("X-CodeQ-Callback", "")


class Receiver(LoopbackServer):
    """A webhook receiver on 127.0.0.1: records every request and answers as
    scripted -- `script` (consumed in order) first, then `choose(request)` if set,
    else `default`. Actions: "ok" (200), "500", "hang" (no answer until stopped).
    stop() and start() again on the same port simulate a host that is down."""

    shutdown_timeout = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Received] = []
        self.script: list[str] = []
        self.default = "ok"
        self.choose: Callable[[], str] | None = None
        self._release = asyncio.Event()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"http://{host}:{self.port}{path}"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._handle)

    async def start(self) -> None:
        self._release = asyncio.Event()
        await super().start()

    async def stop(self) -> None:
        self._release.set()  # hanging handlers return, so cleanup is quick
        await super().stop()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.script:
            action = self.script.pop(0)
        elif self.choose is not None:
            action = self.choose()
        else:
            action = self.default
        parsed = json.loads(body) if body else None
        self.requests.append(
            Received(
                request.path, CIMultiDict(request.headers), body, parsed, action, time.monotonic()
            )
        )
        if action == "hang":
            await self._release.wait()
        if action == "500":
            return web.json_response({"error": "scripted"}, status=500)
        return web.json_response({"ok": True})

    def delivered(self) -> list[Received]:
        """The requests answered 200."""
        return [r for r in self.requests if r.action == "ok"]

    def delivered_task_ids(self) -> set[str]:
        return {r.json["taskId"] for r in self.delivered()}


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    """Starts receivers; stops every one at teardown."""
    started: list[Receiver] = []

    async def start() -> Receiver:
        receiver = Receiver()
        await receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        await receiver.stop()


# ------------------------------------------------------------ helpers


def deliveries(outcome: str) -> float:
    """Result-callback attempts with `outcome` so far in this process, over every
    command (codeQ's labels: kind task_result, command, outcome)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "codeq_webhook_deliveries"
        for sample in family.samples
        if sample.name.endswith("_total")
        and sample.labels["kind"] == "task_result"
        and sample.labels["outcome"] == outcome
    )


async def scraped(http: aiohttp.ClientSession, base: str, sample: str) -> float:
    """One unlabelled sample's value from a daemon's GET /metrics."""
    async with http.get(base + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and not s.labels:
                return float(s.value)
    return 0.0


async def complete(api: Api, command: str = "A", **result: Any) -> str:
    """Claims one task of `command` and posts its result; returns its id."""
    task = await api.claim(commands=[command])
    assert task is not None, f"nothing to claim for {command}"
    status, body = await api.result(task["id"], **result)
    assert status == 200, body
    return str(task["id"])


async def outbox_empty(redis: Redis) -> bool:
    """No callback queued and none kept in the outbox (all delivered)."""
    queued = await redis.zcard(keys.outbox(ACME))
    stored = [k async for k in redis.scan_iter(match=keys.callback(ACME, "*"))]
    return queued == 0 and not stored


def parses_rfc3339(text: str) -> bool:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None


# ------------------------------------------------------------ signing and body


async def test_signature_verifies_with_the_shared_secret_and_not_when_tampered(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receivers: Any
) -> None:
    """The signature checks out with the shared secret; a tampered body or wrong secret fails."""
    receiver = await receivers()
    daemon = await start_daemon(**FAST, webhook_hmac_secret=SECRET)
    api = Api(http, daemon.url)
    await api.create("A", webhook=receiver.url())
    await complete(api)
    [got] = await wait_for(receiver.delivered, 5, message="the callback")

    ts, sig = got.headers["X-CodeQ-Timestamp"], got.headers["X-CodeQ-Signature"]
    assert abs(int(ts) - time.time()) < 60
    assert sig == sig.lower() and len(sig) == 64
    assert verify_signature(SECRET, got.body, ts, sig)
    tampered = got.body.replace(b'"COMPLETED"', b'"FAILED"')
    assert tampered != got.body
    assert not verify_signature(SECRET, tampered, ts, sig)
    assert not verify_signature("another-secret", got.body, ts, sig)
    assert not verify_signature(SECRET, got.body, str(int(ts) + 1), sig)


async def test_callback_is_unsigned_without_a_secret(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receivers: Any
) -> None:
    """With no webhookHmacSecret the callback carries no signature headers."""
    receiver = await receivers()
    daemon = await start_daemon(**FAST)
    api = Api(http, daemon.url)
    await api.create("A", webhook=receiver.url())
    await complete(api)
    [got] = await wait_for(receiver.delivered, 5, message="the callback")
    assert "X-CodeQ-Signature" not in got.headers
    assert "X-CodeQ-Timestamp" not in got.headers


async def test_completed_callback_carries_the_result_and_headers(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receivers: Any
) -> None:
    """A COMPLETED task's callback has codeQ's body fields, the event headers and traceparent."""
    receiver = await receivers()
    daemon = await start_daemon(**FAST)
    api = Api(http, daemon.url)
    created = await api.create(
        "RENDER", webhook=receiver.url(path="/cb/x"), traceParent=TRACE_PARENT
    )
    artifacts = [{"name": "out.mp4", "url": "https://cdn.example.com/out.mp4"}]
    await complete(api, "RENDER", result={"frames": 42}, artifacts=artifacts)
    [got] = await wait_for(receiver.delivered, 5, message="the callback")

    assert got.path == "/cb/x"
    assert got.headers["X-CodeQ-Event"] == "result"
    assert got.headers["traceparent"] == TRACE_PARENT
    assert got.headers["Content-Type"].startswith("application/json")
    assert got.callback_id.startswith(created["id"] + ":")
    body = got.json
    assert body["taskId"] == created["id"]
    assert body["eventType"] == "RENDER"
    assert body["status"] == "COMPLETED"
    assert body["result"] == {"frames": 42}
    assert body["error"] is None
    assert [a["name"] for a in body["artifacts"]] == ["out.mp4"]
    assert parses_rfc3339(body["completedAt"])
    assert "deadLettered" not in body


async def test_failed_result_callback_carries_the_error(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receivers: Any
) -> None:
    """A FAILED result gets a callback with status FAILED, its error and no deadLettered."""
    receiver = await receivers()
    daemon = await start_daemon(**FAST)
    api = Api(http, daemon.url)
    created = await api.create("A", webhook=receiver.url())
    task = await api.claim(commands=["A"])
    status, body = await api.result(task["id"], status="FAILED", error="disk full", result=None)
    assert status == 200, body
    [got] = await wait_for(receiver.delivered, 5, message="the callback")
    assert got.json["taskId"] == created["id"]
    assert got.json["status"] == "FAILED"
    assert got.json["error"] == "disk full"
    assert "traceparent" not in got.headers
    assert "deadLettered" not in got.json


@pytest.mark.parametrize("ending", ["nack", "lease_expiry"])
async def test_dead_lettered_task_gets_a_failed_callback(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receivers: Any, ending: str
) -> None:
    """A task dead-lettered (maxAttempts 1, by nack or lease expiry) gets FAILED + deadLettered."""
    receiver = await receivers()
    daemon = await start_daemon(**FAST)
    api = Api(http, daemon.url)
    created = await api.create("A", webhook=receiver.url(), maxAttempts=1)
    if ending == "nack":
        task = await api.claim(commands=["A"])
        status, body, _ = await api.call(
            "POST", f"{TASKS}/{task['id']}/nack", "worker", {"reason": "boom"}
        )
        assert status == 200 and body["status"] == "dlq", body
    else:
        await api.claim(commands=["A"], leaseSeconds=1)
    [got] = await wait_for(receiver.delivered, 8, message="the dead-letter callback")
    assert got.json["taskId"] == created["id"]
    assert got.json["eventType"] == "A"
    assert got.json["status"] == "FAILED"
    assert got.json["error"] == "MAX_ATTEMPTS"
    assert got.json["deadLettered"] is True
    assert parses_rfc3339(got.json["completedAt"])


# ------------------------------------------------------------ retries and abandonment


@pytest.mark.parametrize(("failure", "outcome"), [("500", "failure"), ("hang", "timeout")])
async def test_callback_retried_after_failures_then_delivered_exactly_once(
    start_daemon: StartDaemon,
    http: aiohttp.ClientSession,
    redis: Redis,
    receivers: Any,
    failure: str,
    outcome: str,
) -> None:
    """Two 500s (or two timeouts) are retried; the third attempt delivers it, once."""
    receiver = await receivers()
    receiver.script = [failure, failure, "ok"]
    daemon = await start_daemon(**FAST, result_webhook_max_attempts=5)
    api = Api(http, daemon.url)
    before = {o: deliveries(o) for o in ("success", outcome)}
    labels = {"kind": "task_result", "command": "A", "outcome": "success"}
    before_a = REGISTRY.get_sample_value("codeq_webhook_deliveries_total", labels) or 0.0
    await api.create("A", webhook=receiver.url())
    await complete(api)

    await wait_for(receiver.delivered, 10, message="a delivery after two failures")
    await wait_for(lambda: outbox_empty(redis), 5, message="the outbox to drain")
    assert [r.action for r in receiver.requests] == [failure, failure, "ok"]
    assert len({r.callback_id for r in receiver.requests}) == 1
    assert Counter(r.callback_id for r in receiver.delivered()).most_common(1)[0][1] == 1
    assert deliveries(outcome) - before[outcome] == 2
    assert deliveries("success") - before["success"] == 1
    # codeQ's labels: kind task_result, the task's command, the outcome
    after_a = REGISTRY.get_sample_value("codeq_webhook_deliveries_total", labels)
    assert after_a == before_a + 1


async def test_receiver_down_past_every_attempt_abandons_the_callback(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis, receivers: Any
) -> None:
    """A receiver down for all attempts: abandoned, listed by the admin API, counted."""
    receiver = await receivers()
    await receiver.stop()  # down: connections are refused
    daemon = await start_daemon(**FAST, result_webhook_max_attempts=3)
    api = Api(http, daemon.url)
    abandoned_before = await scraped(http, daemon.url, "codeq_webhook_callbacks_abandoned_total")
    failures_before = deliveries("failure")
    created = await api.create("A", webhook=receiver.url())
    await complete(api)

    async def listed() -> list[dict[str, Any]]:
        status, body, _ = await api.call("GET", ADMIN_CALLBACKS, "admin")
        assert status == 200, body
        return list(body["abandoned"])

    [entry] = await wait_for(listed, 10, message="the abandoned callback")
    assert entry["taskId"] == created["id"]
    assert entry["url"] == receiver.url()
    assert entry["command"] == "A"
    assert entry["status"] == "COMPLETED"
    assert entry["attempts"] == 3
    assert entry["lastError"]
    assert entry["id"].startswith(created["id"] + ":")
    assert parses_rfc3339(entry["createdAt"]) and parses_rfc3339(entry["abandonedAt"])
    assert deliveries("failure") - failures_before == 3
    abandoned_after = await scraped(http, daemon.url, "codeq_webhook_callbacks_abandoned_total")
    assert abandoned_after - abandoned_before == 1
    assert await redis.zcard(keys.outbox(ACME)) == 0
    assert await redis.zscore(keys.abandoned_callbacks(ACME), entry["id"]) is not None
    status, _, _ = await api.call("GET", ADMIN_CALLBACKS, "producer")
    assert status == 403


# ------------------------------------------------------------ a daemon killed mid-retry


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"staticTokens": {t: c for t, c in TOKENS.values()}}))
    return path


class Serve:
    """A `codeq serve` child on a free port, its stderr in a log file."""

    def __init__(self, config: Path, env: dict[str, str], log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                serve_command("--config", str(config)),
                env=subprocess_env(**env),
                cwd=log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    async def ready(self, http: aiohttp.ClientSession) -> None:
        async def answers() -> bool:
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")
            try:
                async with http.get(self.url + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(answers, 20, interval=0.05, message=f"{self.url}/readyz")


@pytest.fixture
def serve(tmp_path: Path, tokens_file: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(**env: str) -> Serve:
        env = {"PORT": str(free_port()), "LOG_FORMAT": "json", **env}
        child = Serve(tokens_file, env, tmp_path / f"serve-{len(started)}.log")
        started.append(child)
        return child

    yield start
    for child in started:
        stop_process(child.proc)


async def test_sigkill_while_a_retry_is_pending_then_restart_delivers(
    serve: Callable[..., Serve],
    http: aiohttp.ClientSession,
    redis: Redis,
    store_url: str,
    receivers: Any,
) -> None:
    """kill -9 of the daemon between a failed attempt and its retry: a restart delivers it."""
    receiver = await receivers()
    receiver.script = ["500"]
    env = {
        "REDIS_ADDR": store_url,
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "RESULT_WEBHOOK_BASE_BACKOFF_SECONDS": "3",
        "RESULT_WEBHOOK_MAX_BACKOFF_SECONDS": "3",
        "RESULT_WEBHOOK_MAX_ATTEMPTS": "5",
        "RESULT_WEBHOOK_TIMEOUT_SECONDS": "0.5",
    }
    first = serve(**env)
    await first.ready(http)
    api = Api(http, first.url)
    created = await api.create("A", webhook=receiver.url())
    await complete(api)
    await wait_for(lambda: receiver.requests, 5, message="the first (500) attempt")
    [callback_id] = {r.callback_id for r in receiver.requests}
    callback_key = keys.callback(ACME, callback_id)

    async def retry_scheduled() -> bool:
        fields = await redis.hgetall(callback_key)
        return fields.get("claim") == "" and fields.get("lastError") == "HTTP 500"

    await wait_for(retry_scheduled, 5, message="the failed attempt to be recorded")
    os.kill(first.proc.pid, signal.SIGKILL)
    await wait_for(lambda: first.proc.poll() is not None, 5, message="the kill")
    assert first.proc.returncode == -signal.SIGKILL
    assert len(receiver.requests) == 1, "the retry ran before the kill"
    assert await redis.zscore(keys.outbox(ACME), callback_id) is not None

    second = serve(**env)
    await second.ready(http)
    await wait_for(receiver.delivered, 15, message="the retry from the restarted daemon")
    await wait_for(lambda: outbox_empty(redis), 5, message="the outbox to drain")
    assert [r.action for r in receiver.requests] == ["500", "ok"]
    assert {r.callback_id for r in receiver.requests} == {callback_id}
    assert receiver.delivered()[0].json["taskId"] == created["id"]


# ------------------------------------------------------------ 1,000 tasks, flapping receiver


async def _each(fn: Callable[[Any], Awaitable[None]], items: Any) -> None:
    for item in items:
        await fn(item)


async def test_no_callback_lost_across_1000_tasks_with_a_flapping_receiver(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis, receivers: Any
) -> None:
    """1,000 completed tasks; the receiver 500s ~30% and goes down once: every one delivered."""
    total, lanes = 1000, 16
    started = time.monotonic()
    rng = random.Random(1000)
    receiver = await receivers()
    receiver.choose = lambda: "500" if rng.random() < 0.3 else "ok"
    daemon = await start_daemon(
        **FAST,
        result_webhook_max_attempts=30,
        result_webhook_concurrency=32,
        webhook_breaker_threshold=5,
        webhook_breaker_cooldown_seconds=0.2,
    )
    api = Api(http, daemon.url)
    created: list[str] = []

    async def create(n: int) -> None:
        task = await api.create("BULK", webhook=receiver.url(), payload={"n": n})
        created.append(task["id"])

    async def work(_: int) -> None:
        while (task := await api.claim(commands=["BULK"])) is not None:
            status, body = await api.result(task["id"], result={"n": task["payload"]})
            assert status == 200, body

    async def flap() -> None:
        await wait_for(lambda: len(receiver.delivered()) >= total // 3, 60, message="a third")
        failures = deliveries("failure")
        await receiver.stop()
        await wait_for(
            lambda: deliveries("failure") - failures >= 20, 30, message="attempts while down"
        )
        await receiver.start()

    async with asyncio.TaskGroup() as group:
        group.create_task(flap())
        async with asyncio.TaskGroup() as producers:
            for lane in range(lanes):
                producers.create_task(_each(create, range(lane, total, lanes)))
        for lane in range(lanes):
            group.create_task(work(lane))

    assert len(set(created)) == total
    await wait_for(
        lambda: set(created) <= receiver.delivered_task_ids(),
        60,
        message="every task's callback",
    )
    await wait_for(lambda: outbox_empty(redis), 10, message="the outbox to drain")

    per_callback = Counter(r.callback_id for r in receiver.delivered())
    delivered = len(receiver.delivered_task_ids() & set(created))
    duplicated = sum(n - 1 for n in per_callback.values())
    lost = len(set(created) - receiver.delivered_task_ids())
    refused = sum(r.action == "500" for r in receiver.requests)
    print(
        f"\n1000-task callbacks: delivered={delivered} duplicated={duplicated} lost={lost}"
        f" requests={len(receiver.requests)} answered_500={refused}"
        f" runtime={time.monotonic() - started:.1f}s"
    )
    assert lost == 0
    assert delivered == total
    assert len(per_callback) == total
    assert await redis.zcard(keys.abandoned_callbacks(ACME)) == 0
    assert all(r.json["status"] == "COMPLETED" for r in receiver.delivered())


# ------------------------------------------------------------ circuit breaker


def breaker_config(cooldown: float) -> dict[str, Any]:
    return {
        **FAST,
        "webhook_allowed_hosts": ("127.0.0.1", "localhost"),
        "webhook_breaker_threshold": 3,
        "webhook_breaker_cooldown_seconds": cooldown,
        "result_webhook_max_attempts": 50,
    }


async def test_breaker_opens_on_a_dead_host_spares_a_healthy_one_and_recovers(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis, receivers: Any
) -> None:
    """Open breaker: no attempts at the dead host, a healthy host served; then it recovers."""
    cooldown = 2.0
    dead, healthy = await receivers(), await receivers()
    dead.default = "500"
    daemon = await start_daemon(**breaker_config(cooldown))
    api = Api(http, daemon.url)

    first = await api.create("DEAD", webhook=dead.url())
    await complete(api, "DEAD")
    await wait_for(lambda: len(dead.requests) >= 3, 5, message="three failures at the dead host")
    opened = dead.requests[2].at
    [callback_id] = {r.callback_id for r in dead.requests}

    async def deferred() -> bool:
        fields = await redis.hgetall(keys.callback(ACME, callback_id))
        return fields.get("lastError") == "circuit open" and fields.get("claim") == ""

    await wait_for(deferred, 2, message="the dead host's callback deferred")
    # the deferral gives the attempt back: three attempts were made, three counted
    assert await redis.hget(keys.callback(ACME, callback_id), "attempts") == "3"

    more_dead = [(await api.create("DEAD", webhook=dead.url()))["id"] for _ in range(3)]
    for _ in more_dead:
        await complete(api, "DEAD")
    healthy_ids = [
        (await api.create("OK", webhook=healthy.url(host="localhost")))["id"] for _ in range(5)
    ]
    for _ in healthy_ids:
        await complete(api, "OK")
    await wait_for(
        lambda: healthy.delivered_task_ids() == set(healthy_ids), 2, message="the healthy host"
    )
    assert time.monotonic() - opened < cooldown, "too slow to observe the open breaker"
    assert len(dead.requests) == 3, "the dead host was attempted while its breaker was open"
    assert [r.action for r in healthy.requests] == ["ok"] * 5

    dead.default = "ok"  # the dead host comes back
    everyone = {first["id"], *more_dead}
    await wait_for(lambda: dead.delivered_task_ids() == everyone, 10, message="recovery")
    probe = dead.requests[3]
    assert probe.at - opened >= cooldown - 0.1, "probed before the cool-down passed"
    assert probe.action == "ok"
    await wait_for(lambda: outbox_empty(redis), 5, message="the outbox to drain")
    assert len(dead.requests) == 3 + len(everyone)


async def test_half_open_lets_one_probe_through_and_its_failure_reopens(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis, receivers: Any
) -> None:
    """Half-open sends one probe while the rest wait; the probe's failure re-opens the breaker."""
    cooldown = 1.0
    dead = await receivers()
    dead.default = "500"
    daemon = await start_daemon(**breaker_config(cooldown))
    api = Api(http, daemon.url)
    await api.create("DEAD", webhook=dead.url())
    await complete(api, "DEAD")
    await wait_for(lambda: len(dead.requests) >= 3, 5, message="three failures: open")
    for _ in range(2):
        await api.create("DEAD", webhook=dead.url())
        await complete(api, "DEAD")

    async def all_deferred() -> bool:
        found = [k async for k in redis.scan_iter(match=keys.callback(ACME, "*"))]
        rows = [await redis.hgetall(k) for k in found]
        return len(rows) == 3 and all(
            r.get("lastError") == "circuit open" and r.get("claim") == "" for r in rows
        )

    await wait_for(all_deferred, cooldown, message="every callback deferred while open")
    assert len(dead.requests) == 3

    await wait_for(lambda: len(dead.requests) >= 5, 2 * cooldown + 5, message="two probes")
    opened, probe, second_probe = (r.at for r in dead.requests[2:5])
    assert probe - opened >= cooldown - 0.1, "probed before the cool-down passed"
    assert second_probe - probe >= cooldown - 0.1, "more than one delivery while half-open"


# ------------------------------------------------------------ URL guard


async def _stored_tasks(redis: Redis) -> list[str]:
    return [k async for k in redis.scan_iter(match=f"cq:{{{ACME}}}:t:*")]


@pytest.mark.parametrize(
    ("webhook", "error"),
    [
        ("http://127.0.0.1:{port}/hook", "webhook refused"),
        ("http://10.1.2.3/hook", "webhook refused"),
        ("http://169.254.169.254/latest/meta-data/", "webhook refused"),
        ("http://localhost:{port}/hook", "webhook refused"),
        ("http://[::1]:{port}/hook", "webhook refused"),
        ("ftp://example.com/hook", "webhook must be an http or https URL"),
    ],
)
async def test_default_guard_refuses_private_webhooks_at_create(
    api: Api, redis: Redis, webhook: str, error: str
) -> None:
    """With no allowed hosts, a private, loopback, link-local or non-http webhook is a 400."""
    url = webhook.format(port=free_port())
    status, body, _ = await api.call(
        "POST", TASKS, "producer", {"command": "A", "payload": {}, "webhook": url}
    )
    assert status == 400, body
    assert body["error"].startswith(error), body
    assert body["field"] == "webhook"
    assert await _stored_tasks(redis) == []


async def test_allowed_loopback_is_accepted_and_delivered(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis, receivers: Any
) -> None:
    """webhookAllowedHosts 127.0.0.1 lets a loopback receiver in; other private hosts stay out."""
    receiver = await receivers()
    daemon = await start_daemon(**FAST)
    api = Api(http, daemon.url)
    status, body, _ = await api.call(
        "POST",
        TASKS,
        "producer",
        {"command": "A", "payload": {}, "webhook": "http://10.1.2.3/hook"},
    )
    assert status == 400 and body["field"] == "webhook", body
    created = await api.create("A", webhook=receiver.url())
    await complete(api)
    [got] = await wait_for(receiver.delivered, 5, message="the callback")
    assert got.json["taskId"] == created["id"]
    assert len(await _stored_tasks(redis)) == 1


def _loopback_name() -> str | None:
    """This machine's host name, if it resolves only to non-public addresses."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, socket.AF_INET)}
    except OSError:
        return None
    return name if addresses == {"127.0.0.1"} else None


async def test_name_resolving_to_loopback_is_refused_at_delivery(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis, receivers: Any
) -> None:
    """A public-looking name that resolves to 127.0.0.1 is refused when delivering: abandoned."""
    name = _loopback_name()
    if name is None:
        pytest.skip("the host name does not resolve to 127.0.0.1 only")
    receiver = await receivers()
    daemon = await start_daemon(**{**FAST, "webhook_allowed_hosts": ()})
    api = Api(http, daemon.url)
    refused_before = deliveries("refused")
    created = await api.create("A", webhook=receiver.url(host=name))
    await complete(api)

    async def listed() -> list[dict[str, Any]]:
        _, body, _ = await api.call("GET", ADMIN_CALLBACKS, "admin")
        return list(body["abandoned"])

    [entry] = await wait_for(listed, 5, message="the refused callback abandoned")
    assert entry["taskId"] == created["id"]
    assert entry["attempts"] == 1
    assert "resolves to 127.0.0.1" in entry["lastError"]
    assert deliveries("refused") - refused_before == 1
    assert receiver.requests == []
    assert await redis.zcard(keys.outbox(ACME)) == 0
