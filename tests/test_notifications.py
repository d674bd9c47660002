"""Worker subscriptions and "work available" notifications: the subscription API
(validation, workerGroup, heartbeat, delete, list), the notifier's delivery modes
(fanout, group round-robin, hash), minInterval gates, the empty -> non-empty edges
that trigger a notification, expiry and cleaning, signatures, and two daemons on one
store. Receivers are real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import (
    ALL_SCOPES,
    TOKENS,
    WORKER_AUD,
    Api,
    LoopbackServer,
    RunningDaemon,
    wait_for,
)
from multidict import CIMultiDict
from redis.asyncio import Redis

from codeq.config import StaticToken
from codeq.store import keys
from codeq.webhooks import verify_signature

StartDaemon = Callable[..., Awaitable[RunningDaemon]]

SUBS = "/v1/codeq/workers/subscriptions"
TAG = keys.tenant_tag("acme")
# Loopback receivers must be allowed, and tests choose small minIntervalSeconds.
NOTIFY: dict[str, Any] = {
    "webhook_allowed_hosts": ("127.0.0.1",),
    "subscription_min_interval_floor_seconds": 0.0,
}
SECRET = "test-hmac-secret-for-notifications"

# A worker token with a workerGroup claim (not in conftest.TOKENS).
GROUP_TOKEN = "test-worker-token-acme-group-blue"
GROUP_CLAIMS = {
    "sub": "worker-blue",
    "tenantId": "acme",
    "aud": [WORKER_AUD],
    "scope": ALL_SCOPES,
    "eventTypes": ["*"],
    "workerGroup": "blue",
}


# ------------------------------------------------------------ the receiver


@dataclass(frozen=True)
class Received:
    """One POST the receiver got."""

    path: str
    headers: CIMultiDict[str]
    body: dict[str, Any]
    raw: bytes
    at: float  # time.time() on arrival


class Receiver(LoopbackServer):
    """A webhook receiver on 127.0.0.1: records each POST's path, headers and JSON
    body, and answers `statuses[path]` (default 200)."""

    def __init__(self) -> None:
        super().__init__()
        self.base = f"http://127.0.0.1:{self.port}"
        self.received: list[Received] = []
        self.statuses: dict[str, int] = {}

    def url(self, path: str) -> str:
        return self.base + path

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def count(self, path: str) -> int:
        return len(self.at(path))

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.received.append(
            Received(request.path, CIMultiDict(request.headers), json.loads(raw), raw, time.time())
        )
        return web.Response(status=self.statuses.get(request.path, 200))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._handle)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def daemon(start_daemon: StartDaemon) -> RunningDaemon:
    """This module's default daemon lets loopback receivers and small intervals in
    (conftest's `api` fixture uses it)."""
    return await start_daemon(**NOTIFY)


# ------------------------------------------------------------ helpers


async def subscribe(api: Api, url: str, who: str = "worker", **fields: Any) -> dict[str, Any]:
    status, body, _ = await api.call("POST", SUBS, who, {"callbackUrl": url, **fields})
    assert status == 200, body
    return dict(body)


async def drain(api: Api, command: str = "A") -> int:
    """Claims and completes every ready task of `command`, so its queue is empty."""
    done = 0
    while (task := await api.claim(commands=[command], waitSeconds=0)) is not None:
        status, body = await api.result(task["id"])
        assert status == 200, body
        done += 1
    return done


async def sub_keys(redis: Redis) -> list[str]:
    return sorted(await redis.keys("*sub*"))


def ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


_SAMPLE = re.compile(r"^(\w+)\{(.*)\} (\S+)$")


async def metric(http: aiohttp.ClientSession, base: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus metric at GET /metrics (0 when absent)."""
    async with http.get(base + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2]))
        if found == labels:
            return float(match[3])
    return 0.0


MARK = "MARK"


async def add_marker(api: Api, receiver: Receiver) -> None:
    """A subscription to the MARK command only, at /marker: its notifications are the
    positive markers of `settle`."""
    await subscribe(
        api, receiver.url("/marker"), who="worker2", eventTypes=[MARK], minIntervalSeconds=0
    )


async def settle(api: Api, receiver: Receiver) -> None:
    """Proves that the notifier of `api`'s daemon has handled every event caused before:
    it handles events in order, so once a later MARK event's notification arrived, the
    earlier events' notifications were sent."""
    seen = receiver.count("/marker")
    await api.create(MARK)
    await wait_for(lambda: receiver.count("/marker") > seen, message="the marker notification")
    assert await drain(api, MARK) == 1


def all_tokens(*extra: StaticToken) -> tuple[StaticToken, ...]:
    return tuple(StaticToken(token=t, claims=c) for t, c in TOKENS.values()) + extra


# ------------------------------------------------------------ subscription API

OK_URL = "http://127.0.0.1:9/hook"

BAD_SUBSCRIPTIONS = [
    # (token, body, status, text the error must contain)
    ("worker", {}, 400, "callbackUrl"),
    ("worker", {"callbackUrl": 42}, 400, "callbackUrl"),
    ("worker", {"callbackUrl": "ftp://127.0.0.1/hook"}, 400, "callbackUrl"),
    ("worker", {"callbackUrl": "http://10.1.2.3/hook"}, 400, "callbackUrl"),
    ("worker", {"callbackUrl": "http://169.254.169.254/latest"}, 400, "callbackUrl"),
    ("worker", {"callbackUrl": "http://localhost:9/hook"}, 400, "callbackUrl"),
    ("worker", {"callbackUrl": OK_URL, "eventTypes": "A"}, 400, "eventTypes"),
    ("worker", {"callbackUrl": OK_URL, "eventTypes": [""]}, 400, "eventTypes"),
    ("worker", {"callbackUrl": OK_URL, "eventTypes": ["no spaces"]}, 400, "eventTypes"),
    ("worker_a_only", {"callbackUrl": OK_URL, "eventTypes": ["B"]}, 403, "eventTypes"),
    ("worker_a_only", {"callbackUrl": OK_URL, "eventTypes": ["A", "B"]}, 403, "eventTypes"),
    ("worker_a_only", {"callbackUrl": OK_URL, "eventTypes": ["*"]}, 403, "eventTypes"),
    ("worker", {"callbackUrl": OK_URL, "ttlSeconds": 0}, 400, "ttlSeconds"),
    ("worker", {"callbackUrl": OK_URL, "ttlSeconds": 86_401}, 400, "ttlSeconds"),
    ("worker", {"callbackUrl": OK_URL, "ttlSeconds": "long"}, 400, "ttlSeconds"),
    ("worker", {"callbackUrl": OK_URL, "deliveryMode": "broadcast"}, 400, "deliveryMode"),
    ("worker", {"callbackUrl": OK_URL, "deliveryMode": "group"}, 400, "groupId"),
    ("worker", {"callbackUrl": OK_URL, "groupId": "g" * 129}, 400, "groupId"),
    ("worker", {"callbackUrl": OK_URL, "minIntervalSeconds": -1}, 400, "minIntervalSeconds"),
    ("worker", {"callbackUrl": OK_URL, "minIntervalSeconds": 86_401}, 400, "minIntervalSeconds"),
    ("worker", {"callbackUrl": OK_URL, "minIntervalSeconds": "often"}, 400, "minIntervalSeconds"),
    ("worker_claim_only", {"callbackUrl": OK_URL}, 403, "codeq:subscribe"),
    # A producer token is not a worker token: 401, as on every worker endpoint.
    ("producer", {"callbackUrl": OK_URL}, 401, "worker"),
    (None, {"callbackUrl": OK_URL}, 401, ""),
]


@pytest.mark.parametrize(
    ("who", "body", "status", "named"),
    BAD_SUBSCRIPTIONS,
    ids=[
        f"{w}-{'-'.join(f'{k}={v}' for k, v in b.items())[:60]}" for w, b, _, _ in BAD_SUBSCRIPTIONS
    ],
)
async def test_bad_subscription_is_refused_and_stores_nothing(
    api: Api, redis: Redis, who: str | None, body: dict[str, Any], status: int, named: str
) -> None:
    """Each bad subscription input gets its 4xx with an error naming the field, and
    stores nothing."""
    got, data, _ = await api.call("POST", SUBS, who, body)
    assert got == status, data
    assert isinstance(data, dict) and isinstance(data.get("error"), str), data
    assert named in data["error"]
    assert await sub_keys(redis) == []


async def test_subscription_answers_its_fields_and_is_stored(
    api: Api, redis: Redis, receiver: Receiver
) -> None:
    """A valid subscription answers 200 with its fields, names unknown fields in
    X-CodeQ-Warning, and is stored and indexed under each of its commands."""
    before = time.time() * 1000
    status, body, headers = await api.call(
        "POST",
        SUBS,
        "worker",
        {
            "callbackUrl": receiver.url("/hook"),
            "eventTypes": ["A", "B"],
            "ttlSeconds": 120,
            "minIntervalSeconds": 0.5,
            "colour": "blue",
        },
    )
    assert status == 200, body
    assert "colour" in headers.get("X-CodeQ-Warning", "")
    sub_id = body["subscriptionId"]
    assert body["id"] == sub_id and sub_id.startswith(TAG + "-")
    assert body["callbackUrl"] == receiver.url("/hook")
    assert body["eventTypes"] == ["A", "B"]
    assert body["deliveryMode"] == "fanout"
    assert body["minIntervalSeconds"] == 0.5
    assert body["workerId"] == "worker-1"
    assert "groupId" not in body
    assert ms(body["expiresAt"]) - ms(body["createdAt"]) == 120_000
    assert before - 1000 <= ms(body["createdAt"]) <= time.time() * 1000 + 1000

    stored = await redis.hgetall(keys.subscription(TAG, sub_id))
    assert stored["callbackUrl"] == receiver.url("/hook")
    assert stored["minIntervalMs"] == "500"
    for command in ("A", "B"):
        assert await redis.zscore(keys.subscriptions_of(TAG, command), sub_id) is not None
    assert await redis.zscore(keys.subscriptions(TAG), sub_id) == ms(body["expiresAt"])


@pytest.mark.parametrize(
    ("who", "event_types"), [("worker_a_only", ["A"]), ("worker", ["*"])], ids=["a-only", "wild"]
)
async def test_subscription_defaults(
    api: Api, receiver: Receiver, who: str, event_types: list[str]
) -> None:
    """Without options a subscription takes the token's eventTypes, fanout, a 5 s
    minInterval and a 300 s ttl."""
    body = await subscribe(api, receiver.url("/hook"), who=who)
    assert body["eventTypes"] == event_types
    assert body["deliveryMode"] == "fanout"
    assert body["minIntervalSeconds"] == 5.0
    assert ms(body["expiresAt"]) - ms(body["createdAt"]) == 300_000


async def test_min_interval_is_raised_to_the_configured_floor(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """minIntervalSeconds below subscriptionMinIntervalFloorSeconds is raised to it;
    above it is kept."""
    running = await start_daemon(**{**NOTIFY, "subscription_min_interval_floor_seconds": 2.0})
    api = Api(http, running.url)
    low = await subscribe(api, receiver.url("/low"), minIntervalSeconds=0)
    high = await subscribe(api, receiver.url("/high"), minIntervalSeconds=10)
    assert low["minIntervalSeconds"] == 2.0
    assert high["minIntervalSeconds"] == 10.0


async def test_list_shows_the_live_subscriptions_of_the_callers_tenant(
    api: Api, receiver: Receiver
) -> None:
    """GET /workers/subscriptions lists every live subscription of the caller's tenant,
    none of another tenant's."""
    mine = await subscribe(api, receiver.url("/1"), who="worker")
    colleague = await subscribe(api, receiver.url("/2"), who="worker2")
    other = await subscribe(api, receiver.url("/3"), who="worker_globex")

    status, body, _ = await api.call("GET", SUBS, "worker")
    assert status == 200, body
    listed = {s["subscriptionId"]: s for s in body["subscriptions"]}
    assert set(listed) == {mine["id"], colleague["id"]}
    assert listed[mine["id"]]["callbackUrl"] == receiver.url("/1")

    status, body, _ = await api.call("GET", SUBS, "worker_globex")
    assert status == 200, body
    assert [s["subscriptionId"] for s in body["subscriptions"]] == [other["id"]]


# ------------------------------------------------------------ workerGroup


@pytest.fixture
async def group_api(start_daemon: StartDaemon, http: aiohttp.ClientSession) -> Api:
    running = await start_daemon(
        **NOTIFY, static_tokens=all_tokens(StaticToken(GROUP_TOKEN, GROUP_CLAIMS))
    )
    return Api(http, running.url)


async def group_subscribe(api: Api, body: dict[str, Any]) -> tuple[int, Any]:
    status, data, _ = await api.call(
        "POST", SUBS, None, body, headers={"Authorization": f"Bearer {GROUP_TOKEN}"}
    )
    return status, data


@pytest.mark.parametrize(
    "fields",
    [{}, {"groupId": "blue"}, {"deliveryMode": "group"}, {"deliveryMode": "hash"}],
    ids=["none", "same", "group-mode", "hash-mode"],
)
async def test_worker_group_is_the_default_group(
    group_api: Api, receiver: Receiver, fields: dict[str, Any]
) -> None:
    """A token with a workerGroup subscribes in that group: groupId defaults to it
    (group mode then needs no groupId) or may name it."""
    status, body = await group_subscribe(group_api, {"callbackUrl": receiver.url("/"), **fields})
    assert status == 200, body
    assert body["groupId"] == "blue"
    assert body["deliveryMode"] == fields.get("deliveryMode", "fanout")


async def test_worker_group_token_may_not_name_another_group(
    group_api: Api, redis: Redis, receiver: Receiver
) -> None:
    """A token with a workerGroup gets 403 naming groupId for another group, and
    nothing is stored."""
    status, body = await group_subscribe(
        group_api, {"callbackUrl": receiver.url("/"), "deliveryMode": "group", "groupId": "red"}
    )
    assert status == 403, body
    assert "groupId" in body["error"]
    assert await sub_keys(redis) == []


# ------------------------------------------------------------ heartbeat, delete


async def heartbeat(api: Api, sub_id: str, who: str = "worker", **fields: Any) -> tuple[int, Any]:
    status, body, _ = await api.call("POST", f"{SUBS}/{sub_id}/heartbeat", who, fields)
    return status, body


async def test_heartbeat_extends_expiry(api: Api, redis: Redis, receiver: Receiver) -> None:
    """A heartbeat with ttlSeconds moves expiresAt to now + ttl, in the answer, the
    store and the list; one without keeps that ttl."""
    sub = await subscribe(api, receiver.url("/"), ttlSeconds=60)
    first = ms(sub["expiresAt"])

    status, body = await heartbeat(api, sub["id"], ttlSeconds=600)
    assert status == 200, body
    assert body["subscriptionId"] == sub["id"]
    renewed = ms(body["expiresAt"])
    assert renewed - time.time() * 1000 == pytest.approx(600_000, abs=5_000)
    assert renewed > first + 500_000
    assert int(await redis.hget(keys.subscription(TAG, sub["id"]), "expiresAt")) == renewed
    assert await redis.zscore(keys.subscriptions(TAG), sub["id"]) == renewed
    assert await redis.zscore(keys.subscriptions_of(TAG, "*"), sub["id"]) == renewed

    status, body = await heartbeat(api, sub["id"])
    assert status == 200, body
    assert ms(body["expiresAt"]) >= renewed
    assert ms(body["expiresAt"]) - time.time() * 1000 == pytest.approx(600_000, abs=5_000)

    _, listed, _ = await api.call("GET", SUBS, "worker")
    assert [s["expiresAt"] for s in listed["subscriptions"]] == [body["expiresAt"]]


@pytest.mark.parametrize(
    ("who", "sub_id", "fields", "status"),
    [
        ("worker2", None, {}, 403),
        ("worker_globex", None, {}, 404),
        ("worker", f"{TAG}-sUnknownSubscription", {}, 404),
        ("worker", "not a subscription id", {}, 400),
        ("worker", None, {"ttlSeconds": 0}, 400),
        ("worker", None, {"ttlSeconds": 86_401}, 400),
        ("worker_claim_only", None, {}, 403),
    ],
    ids=["other-worker", "other-tenant", "unknown", "malformed", "ttl-0", "ttl-big", "no-scope"],
)
async def test_heartbeat_refusals_change_nothing(
    api: Api,
    redis: Redis,
    receiver: Receiver,
    who: str,
    sub_id: str | None,
    fields: dict[str, Any],
    status: int,
) -> None:
    """A heartbeat by another worker (403), another tenant (404), for an unknown (404)
    or malformed (400) id, or with a bad ttl (400) is refused and leaves the expiry."""
    sub = await subscribe(api, receiver.url("/"), ttlSeconds=60)
    target = sub_id or sub["id"]
    got, body = await heartbeat(api, target.replace(" ", "%20"), who=who, **fields)
    assert got == status, body
    assert "error" in body
    assert await redis.zscore(keys.subscriptions(TAG), sub["id"]) == ms(sub["expiresAt"])


async def test_heartbeat_after_expiry_is_not_found(api: Api, receiver: Receiver) -> None:
    """Once its ttl has passed a subscription cannot be renewed: 404."""
    sub = await subscribe(api, receiver.url("/"), ttlSeconds=1)
    status, body = await heartbeat(api, sub["id"])
    assert status == 200, body
    expiry = ms(body["expiresAt"]) / 1000
    # Polling with heartbeats would renew it: wait for the clock instead.
    await wait_for(lambda: time.time() > expiry + 0.05, timeout=3, message="the ttl to pass")
    status, body = await heartbeat(api, sub["id"], ttlSeconds=300)
    assert status == 404, body


async def test_renewed_subscription_outlives_its_first_ttl(api: Api, receiver: Receiver) -> None:
    """A subscription renewed by heartbeat is still notified after its first ttl; a
    sibling that was not renewed is not."""
    await add_marker(api, receiver)
    kept = await subscribe(
        api, receiver.url("/kept"), eventTypes=["A"], ttlSeconds=1, minIntervalSeconds=0
    )
    lapsed = await subscribe(
        api, receiver.url("/lapsed"), eventTypes=["A"], ttlSeconds=1, minIntervalSeconds=0
    )
    status, body = await heartbeat(api, kept["id"], ttlSeconds=300)
    assert status == 200, body
    first_expiry = max(ms(kept["expiresAt"]), ms(lapsed["expiresAt"])) / 1000
    await wait_for(
        lambda: time.time() > first_expiry + 0.1, timeout=3, message="the first ttl to pass"
    )

    await api.create("A")
    await wait_for(lambda: receiver.count("/kept") == 1, message="the renewed subscription")
    await settle(api, receiver)
    assert receiver.count("/lapsed") == 0


async def test_delete_subscription(api: Api, redis: Redis, receiver: Receiver) -> None:
    """Only the owner deletes a subscription (204; another worker 403, another tenant
    404); its keys go at once, it is no longer listed or notified, and a second
    delete is 404."""
    sub = await subscribe(api, receiver.url("/deleted"), minIntervalSeconds=0)
    await add_marker(api, receiver)
    path = f"{SUBS}/{sub['id']}"

    assert (await api.call("DELETE", path, "worker2"))[0] == 403
    assert (await api.call("DELETE", path, "worker_globex"))[0] == 404
    assert (await api.call("DELETE", f"{SUBS}/{TAG}-sNoSuchSubscription", "worker"))[0] == 404
    assert await redis.exists(keys.subscription(TAG, sub["id"])) == 1

    status, body, _ = await api.call("DELETE", path, "worker")
    assert status == 204, body
    assert await redis.exists(keys.subscription(TAG, sub["id"])) == 0
    assert await redis.zscore(keys.subscriptions(TAG), sub["id"]) is None
    assert await redis.zscore(keys.subscriptions_of(TAG, "*"), sub["id"]) is None
    _, listed, _ = await api.call("GET", SUBS, "worker")
    assert [s["workerId"] for s in listed["subscriptions"]] == ["worker-2"]  # the marker
    assert (await api.call("DELETE", path, "worker"))[0] == 404

    await api.create("A")
    await settle(api, receiver)
    assert receiver.count("/deleted") == 0


# ------------------------------------------------------------ what a notification is


async def test_notification_body_and_headers(api: Api, receiver: Receiver) -> None:
    """A notification is a POST of {eventType, available, queueDepth, claimUrl, sentAt,
    notificationId} with X-CodeQ-Event and X-CodeQ-Subscription, unsigned without a
    secret."""
    sub = await subscribe(api, receiver.url("/hook"), eventTypes=["A"], minIntervalSeconds=0)
    before = time.time()
    await api.create("A")
    await wait_for(lambda: receiver.count("/hook") == 1, message="the notification")
    got = receiver.at("/hook")[0]
    assert got.body["eventType"] == "A"
    assert got.body["available"] is True
    assert got.body["queueDepth"] == 1
    assert got.body["claimUrl"] == "/v1/codeq/tasks/claim"
    assert got.body["notificationId"].startswith("ntf-")
    sent = ms(got.body["sentAt"]) / 1000
    assert before - 1 <= sent <= time.time() + 1
    assert set(got.body) == {
        "eventType",
        "available",
        "queueDepth",
        "claimUrl",
        "sentAt",
        "notificationId",
    }
    assert got.headers["X-CodeQ-Event"] == "queue_ready"
    assert got.headers["X-CodeQ-Subscription"] == sub["id"]
    assert got.headers["Content-Type"].startswith("application/json")
    assert "X-CodeQ-Signature" not in got.headers
    assert "X-CodeQ-Timestamp" not in got.headers


async def test_notification_signature_verifies(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """With webhook_hmac_secret set, X-CodeQ-Timestamp and X-CodeQ-Signature sign the
    exact body: verify_signature accepts it, and refuses another secret or body."""
    running = await start_daemon(**NOTIFY, webhook_hmac_secret=SECRET)
    api = Api(http, running.url)
    await subscribe(api, receiver.url("/signed"), minIntervalSeconds=0)
    await api.create("A")
    await wait_for(lambda: receiver.count("/signed") == 1, message="the notification")
    got = receiver.at("/signed")[0]
    stamp, signature = got.headers["X-CodeQ-Timestamp"], got.headers["X-CodeQ-Signature"]
    assert stamp.isdigit() and abs(int(stamp) - time.time()) < 30
    assert verify_signature(SECRET, got.raw, stamp, signature)
    assert not verify_signature("another-secret", got.raw, stamp, signature)
    assert not verify_signature(SECRET, got.raw.replace(b'"A"', b'"B"'), stamp, signature)
    assert not verify_signature(SECRET, got.raw, str(int(stamp) + 1), signature)


async def test_failed_notification_is_counted_and_subscription_stays(
    api: Api, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A receiver answering 500 counts a failed queue_ready delivery; the subscription
    stays and gets the next event."""
    receiver.statuses["/broken"] = 500
    labels = {"kind": "queue_ready", "command": "A", "outcome": "failure"}
    failures = await metric(http, api.base, "codeq_webhook_deliveries_total", **labels)
    await subscribe(api, receiver.url("/broken"), minIntervalSeconds=0)

    await api.create("A")
    await wait_for(lambda: receiver.count("/broken") == 1, message="the first notification")

    async def counted() -> bool:
        now = await metric(http, api.base, "codeq_webhook_deliveries_total", **labels)
        return now == failures + 1

    await wait_for(counted, message="the failed delivery in codeq_webhook_deliveries_total")
    assert await drain(api) == 1
    await api.create("A")
    await wait_for(lambda: receiver.count("/broken") == 2, message="the second notification")


# ------------------------------------------------------------ delivery modes


async def test_fanout_reaches_every_matching_subscription(api: Api, receiver: Receiver) -> None:
    """Fanout: an event reaches every live subscription of its command (and '*'), once
    each, and no subscription of another command."""
    await subscribe(
        api, receiver.url("/w1-a"), who="worker", eventTypes=["A"], minIntervalSeconds=0
    )
    await subscribe(api, receiver.url("/w2-all"), who="worker2", minIntervalSeconds=0)
    await subscribe(api, receiver.url("/wa"), who="worker_a_only", minIntervalSeconds=0)
    await subscribe(
        api, receiver.url("/w1-b"), who="worker", eventTypes=["B"], minIntervalSeconds=0
    )
    for_a = ["/w1-a", "/w2-all", "/wa"]

    await api.create("A")
    await wait_for(
        lambda: all(receiver.count(p) == 1 for p in for_a), message="all three A subscriptions"
    )
    # The B event is the marker: the notifier handled the A event before it.
    await api.create("B")
    await wait_for(lambda: receiver.count("/w1-b") == 1, message="the B subscription")
    await wait_for(lambda: receiver.count("/w2-all") == 2, message="the '*' subscription for B")
    assert [r.body["eventType"] for r in receiver.at("/w1-b")] == ["B"]
    assert receiver.count("/w1-a") == 1 and receiver.count("/wa") == 1
    assert [r.body["eventType"] for r in receiver.at("/w2-all")] == ["A", "B"]


async def test_other_tenants_subscriptions_are_not_notified(api: Api, receiver: Receiver) -> None:
    """An event of one tenant notifies none of another tenant's subscriptions."""
    await subscribe(api, receiver.url("/acme"), minIntervalSeconds=0)
    await subscribe(api, receiver.url("/globex"), who="worker_globex", minIntervalSeconds=0)
    await api.create("A")
    await wait_for(lambda: receiver.count("/acme") == 1, message="the acme notification")
    await api.create("A", who="producer_globex")  # the marker
    await wait_for(lambda: receiver.count("/globex") >= 1, message="the globex notification")
    assert receiver.count("/globex") == 1
    assert receiver.count("/acme") == 1


async def test_group_notifies_one_member_per_event_round_robin(
    api: Api, receiver: Receiver
) -> None:
    """Group mode: each event reaches exactly one member of each groupId, taking turns
    over the members in subscription-id order."""
    members: dict[str, list[str]] = {"g1": [], "g2": []}
    paths: dict[str, str] = {}
    for group, size in (("g1", 3), ("g2", 2)):
        for i in range(size):
            path = f"/{group}-{i}"
            sub = await subscribe(
                api,
                receiver.url(path),
                who=("worker", "worker2")[i % 2],
                eventTypes=["A"],
                deliveryMode="group",
                groupId=group,
                minIntervalSeconds=0,
            )
            members[group].append(sub["id"])
            paths[sub["id"]] = path
    await subscribe(api, receiver.url("/marker"), eventTypes=["B"], minIntervalSeconds=0)

    def got(group: str) -> list[str]:
        """The member ids of a group that were notified, in arrival order."""
        return [
            r.headers["X-CodeQ-Subscription"] for r in receiver.received if r.path[1:3] == group
        ]

    events = 6
    for n in range(1, events + 1):
        await api.create("A")
        await wait_for(
            lambda n=n: len(got("g1")) >= n and len(got("g2")) >= n,
            message=f"event {n} in both groups",
        )
        assert await drain(api) == 1  # so the next create is an empty -> non-empty edge
    await api.create("B")
    await wait_for(lambda: receiver.count("/marker") == 1, message="the marker")

    for group, ids in members.items():
        order = sorted(ids)
        seen = got(group)
        assert len(seen) == events, (group, seen)
        start = order.index(seen[0])
        expected = [order[(start + i) % len(order)] for i in range(events)]
        assert seen == expected, group
    print(f"group g1 turns: {[paths[i] for i in got('g1')]}")


async def test_group_skips_a_member_whose_interval_is_closed(api: Api, receiver: Receiver) -> None:
    """Group mode: a member whose minInterval gate is closed is skipped for the next
    member, so every event still reaches exactly one member of the group."""
    await subscribe(
        api,
        receiver.url("/slow"),
        eventTypes=["A"],
        deliveryMode="group",
        groupId="g",
        minIntervalSeconds=3600,
    )
    await subscribe(
        api,
        receiver.url("/fast"),
        who="worker2",
        eventTypes=["A"],
        deliveryMode="group",
        groupId="g",
        minIntervalSeconds=0,
    )
    events = 4
    for n in range(1, events + 1):
        await api.create("A")
        await wait_for(
            lambda n=n: receiver.count("/slow") + receiver.count("/fast") >= n,
            message=f"event {n}",
        )
        assert await drain(api) == 1
    await subscribe(api, receiver.url("/marker"), eventTypes=["B"], minIntervalSeconds=0)
    await api.create("B")
    await wait_for(lambda: receiver.count("/marker") == 1, message="the marker")
    assert receiver.count("/slow") == 1  # its gate stays closed for an hour
    assert receiver.count("/fast") == events - 1


async def test_hash_picks_the_same_member_within_a_time_bucket(
    api: Api, receiver: Receiver
) -> None:
    """Hash mode: each event reaches exactly one member of the group, the same member
    for every event of a command within one 60-second bucket."""
    for i in range(3):
        await subscribe(
            api,
            receiver.url(f"/h-{i}"),
            who=("worker", "worker2")[i % 2],
            eventTypes=["A"],
            deliveryMode="hash",
            groupId="h",
            minIntervalSeconds=0,
        )
    await subscribe(api, receiver.url("/marker"), eventTypes=["B"], minIntervalSeconds=0)

    def hashed() -> list[Received]:
        return [r for r in receiver.received if r.path.startswith("/h-")]

    events = 5
    buckets: list[int | None] = []
    for n in range(1, events + 1):
        before = int(time.time() // 60)
        await api.create("A")
        await wait_for(lambda n=n: len(hashed()) >= n, message=f"event {n}")
        after = int(hashed()[n - 1].at // 60)
        buckets.append(before if before == after else None)  # None: straddled a boundary
        assert await drain(api) == 1
    await api.create("B")
    await wait_for(lambda: receiver.count("/marker") == 1, message="the marker")

    got = hashed()
    assert len(got) == events
    by_bucket: dict[int, set[str]] = {}
    for bucket, delivery in zip(buckets, got, strict=True):
        if bucket is not None:
            by_bucket.setdefault(bucket, set()).add(delivery.path)
    assert max(len([b for b in buckets if b == k]) for k in by_bucket) >= 2, buckets
    for bucket, chosen in by_bucket.items():
        assert len(chosen) == 1, (bucket, chosen)


# ------------------------------------------------------------ minInterval


async def test_min_interval_bounds_a_notification_storm(api: Api, receiver: Receiver) -> None:
    """minIntervalSeconds caps a subscription's notifications, across a burst of 500
    creates drained concurrently (many empty -> non-empty edges), at one per interval."""
    interval = 1.0
    total = 500
    await subscribe(api, receiver.url("/gated"), eventTypes=["A"], minIntervalSeconds=interval)
    await subscribe(api, receiver.url("/every"), eventTypes=["A"], minIntervalSeconds=0)
    await subscribe(api, receiver.url("/marker"), eventTypes=["B"], minIntervalSeconds=0)
    done = 0

    async def drainer() -> None:
        nonlocal done
        while done < total:
            task = await api.claim(commands=["A"], waitSeconds=1, leaseSeconds=60)
            if task is not None:
                status, body = await api.result(task["id"])
                assert status == 200, body
                done += 1

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(4):
            group.create_task(drainer())
        for _ in range(total):
            await api.create("A")
    # The marker's event is handled after every A event before it.
    await api.create("B")
    await wait_for(lambda: receiver.count("/marker") == 1, message="the marker")
    elapsed = time.monotonic() - started

    gated, every = receiver.count("/gated"), receiver.count("/every")
    print(f"storm: {total} creates in {elapsed:.2f}s, gated={gated}, ungated={every}")
    assert gated >= 1
    assert gated <= elapsed / interval + 1
    assert every > gated  # there were more edges than the gate let through


# ------------------------------------------------------------ what triggers one


async def test_create_into_a_non_empty_queue_notifies_nobody(api: Api, receiver: Receiver) -> None:
    """Only an empty -> non-empty edge notifies: a create into a queue that already
    has a ready task does not."""
    await subscribe(api, receiver.url("/a"), eventTypes=["A"], minIntervalSeconds=0)
    await subscribe(api, receiver.url("/marker"), eventTypes=["B"], minIntervalSeconds=0)
    await api.create("A")
    await wait_for(lambda: receiver.count("/a") == 1, message="the first create's notification")
    await api.create("A")
    await api.create("A", priority=7)  # another tier of the same command, still non-empty
    await api.create("B")
    await wait_for(lambda: receiver.count("/marker") == 1, message="the marker")
    assert receiver.count("/a") == 1


async def test_delayed_task_notifies_when_due(api: Api, receiver: Receiver) -> None:
    """A delayed task notifies when it becomes due, not when it is created."""
    await subscribe(api, receiver.url("/a"), eventTypes=["A"], minIntervalSeconds=0)
    created = time.time()
    await api.create("A", delaySeconds=0.5)
    await wait_for(lambda: receiver.count("/a") == 1, message="the due notification")
    assert receiver.at("/a")[0].at >= created + 0.45
    assert receiver.at("/a")[0].body["queueDepth"] == 1
    assert await drain(api) == 1


async def test_paused_command_notifies_nobody_until_resumed(api: Api, receiver: Receiver) -> None:
    """A paused command notifies nobody; resuming it with work ready notifies."""
    await subscribe(api, receiver.url("/a"), eventTypes=["A"], minIntervalSeconds=0)
    await subscribe(api, receiver.url("/marker"), eventTypes=["B"], minIntervalSeconds=0)
    status, body, _ = await api.call("POST", "/v1/codeq/admin/queues/A/pause", "admin")
    assert status == 200, body
    await api.create("A")
    await api.create("B")
    await wait_for(lambda: receiver.count("/marker") == 1, message="the marker")
    assert receiver.count("/a") == 0

    status, body, _ = await api.call("POST", "/v1/codeq/admin/queues/A/resume", "admin")
    assert status == 200, body
    await wait_for(lambda: receiver.count("/a") == 1, message="the notification on resume")


@pytest.mark.parametrize("how", ["nack", "abandon", "lease_expiry"])
async def test_requeue_notifies(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receiver: Receiver, how: str
) -> None:
    """A task requeued into an empty queue (nack with delay 0, abandon, lease expiry)
    notifies again."""
    running = await start_daemon(**NOTIFY, backoff_base_seconds=0)
    api = Api(http, running.url)
    await subscribe(api, receiver.url("/a"), eventTypes=["A"], minIntervalSeconds=0)
    task = await api.create("A")
    await wait_for(lambda: receiver.count("/a") == 1, message="the create's notification")
    lease = 1 if how == "lease_expiry" else 60
    claimed = await api.claim(commands=["A"], leaseSeconds=lease)
    assert claimed["id"] == task["id"]

    if how != "lease_expiry":
        body = {"delaySeconds": 0} if how == "nack" else {}
        status, data, _ = await api.call(
            "POST", f"/v1/codeq/tasks/{task['id']}/{how}", "worker", body
        )
        assert status == 200, data
        assert data["status"] == "requeued"
    await wait_for(lambda: receiver.count("/a") == 2, timeout=8, message=f"the {how} notification")
    assert receiver.at("/a")[1].body["queueDepth"] == 1
    again = await api.claim(commands=["A"])
    assert again["id"] == task["id"]


async def test_dlq_redrive_notifies(api: Api, receiver: Receiver) -> None:
    """Redriving a dead-lettered task into an empty queue notifies."""
    await subscribe(api, receiver.url("/a"), eventTypes=["A"], minIntervalSeconds=0)
    task = await api.create("A", maxAttempts=1)
    await wait_for(lambda: receiver.count("/a") == 1, message="the create's notification")
    await api.claim(commands=["A"])
    status, data, _ = await api.call("POST", f"/v1/codeq/tasks/{task['id']}/nack", "worker", {})
    assert status == 200 and data["status"] == "dlq", data

    status, data, _ = await api.call(
        "POST", "/v1/codeq/admin/queues/A/dlq/redrive", "admin", {"all": True}
    )
    assert status == 200 and data["redriven"] == 1, data
    await wait_for(lambda: receiver.count("/a") == 2, message="the redrive notification")


# ------------------------------------------------------------ expiry


async def test_expired_subscription_is_cleaned_and_not_notified(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis, receiver: Receiver
) -> None:
    """An expired subscription is removed by the cleaner (its keys go, the
    codeq_subscriptions_active gauge drops) and is not notified."""
    running = await start_daemon(**NOTIFY, subscription_cleanup_interval_seconds=0.2)
    api = Api(http, running.url)
    await add_marker(api, receiver)
    short = await subscribe(
        api, receiver.url("/short"), eventTypes=["A"], ttlSeconds=1, minIntervalSeconds=0
    )
    await subscribe(api, receiver.url("/long"), eventTypes=["A"], minIntervalSeconds=0)

    async def gauge(value: float) -> bool:
        got = await metric(http, api.base, "codeq_subscriptions_active", command="A")
        return got == value

    await wait_for(lambda: gauge(2), message="the gauge to show both subscriptions")

    async def cleaned() -> bool:
        return (
            await redis.exists(keys.subscription(TAG, short["id"])) == 0
            and await redis.zscore(keys.subscriptions(TAG), short["id"]) is None
            and await redis.zscore(keys.subscriptions_of(TAG, "A"), short["id"]) is None
        )

    await wait_for(cleaned, timeout=5, message="the cleaner to remove the expired subscription")
    await wait_for(lambda: gauge(1), message="the gauge to drop to 1")
    assert (await heartbeat(api, short["id"]))[0] == 404

    await api.create("A")
    await wait_for(lambda: receiver.count("/long") == 1, message="the live subscription")
    await settle(api, receiver)
    assert receiver.count("/short") == 0


# ------------------------------------------------------------ several daemons


async def test_task_created_right_after_a_daemon_starts_notifies(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A daemon serves only once it hears the ready channel: a task created through it
    at once after its start still notifies (it used to be lost most of the time)."""
    first = Api(http, (await start_daemon(**NOTIFY)).url)
    for n in range(3):
        command = f"FRESH{n}"
        path = f"/fresh-{n}"
        await subscribe(first, receiver.url(path), eventTypes=[command], minIntervalSeconds=0)
        fresh = await start_daemon(**NOTIFY)
        await Api(http, fresh.url).create(command)
        await wait_for(lambda p=path: receiver.count(p) == 1, message=f"notification {n}")
        await fresh.stop()


async def test_two_daemons_notify_each_event_once(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """With two daemons on one store, every event is notified once, whichever daemon
    caused it (creates through either, a delayed task both movers see)."""
    first = Api(http, (await start_daemon(**NOTIFY)).url)
    second = Api(http, (await start_daemon(**NOTIFY)).url)
    await subscribe(first, receiver.url("/a"), eventTypes=["A"], minIntervalSeconds=0)
    await add_marker(first, receiver)

    steps = [(first, {}), (second, {}), (first, {"delaySeconds": 0.3}), (second, {})]
    for n, (api, fields) in enumerate(steps, start=1):
        await api.create("A", **fields)
        await wait_for(lambda n=n: receiver.count("/a") >= n, message=f"event {n}")
        other = second if api is first else first
        assert await drain(other) == 1
    # Each daemon notifies the events it caused: settle both notifiers.
    await settle(first, receiver)
    await settle(second, receiver)
    got = receiver.at("/a")
    assert len(got) == len(steps)
    assert len({r.body["notificationId"] for r in got}) == len(steps)
