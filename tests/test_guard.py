# ruff: noqa: RUF001 -- the hosts below are spelled with look-alike characters on purpose
"""The outbound URL guard against every spelling of a host: Unicode (fullwidth digits,
ideographic full stops), the numeric IPv4 forms the C resolver and browsers accept,
IPv6 forms carrying IPv4 addresses, zones and malformed URLs -- refused at
registration of a task webhook and a subscription (400, nothing stored) and at
delivery (no request reaches a real receiver on 127.0.0.1), while public hosts pass
and webhookAllowedHosts lets its hosts through in any spelling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import Api, LoopbackServer, RunningDaemon, free_port, wait_for
from redis.asyncio import Redis
from yarl import URL

from codeq.store import keys
from codeq.webhooks.client import WebhookClient
from codeq.webhooks.guard import RefusedTarget, UrlGuard, normal_host

StartDaemon = Callable[..., Awaitable[RunningDaemon]]

ACME = keys.tenant_tag("acme")
TASKS = "/v1/codeq/tasks"
SUBS = "/v1/codeq/workers/subscriptions"
ADMIN_CALLBACKS = "/v1/codeq/admin/callbacks"

# Spellings of 127.0.0.1 that a connection reaches 127.0.0.1 by (with a port).
LOOPBACK_SPELLINGS = [
    "１２７.０.０.１",  # fullwidth digits
    "127。0。0。1",  # ideographic full stops
    "127．0．0．1",  # fullwidth full stops
    "127｡0｡0｡1",  # halfwidth ideographic full stops
    "①②⑦.⓪.⓪.①",  # circled digits
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "０ｘ７ｆ０００００１",  # fullwidth hex
    "0x7f.0.0.1",
    "0x7f.1",
    "0177.0.0.1",
    "0177.0.0.01",
    "017700000001",
    "127.0.0.1.",  # trailing dot
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:7f00:1]",
]

# (URL, what the refusal must name), each refused with the default config.
HOSTILE = [
    *((f"http://{host}:8080/hook", "127.0.0.1, a loopback") for host in LOOPBACK_SPELLINGS[5:]),
    *((f"http://{host}:8080/hook", "127.0.0.1 is a loopback") for host in LOOPBACK_SPELLINGS[:5]),
    ("http://１６９.２５４.１６９.２５４/latest/meta-data/", "169.254.169.254 is a link-local"),
    ("http://169。254。169。254/latest/meta-data/", "169.254.169.254 is a link-local"),
    ("http://169.254.43518/latest/meta-data/", "169.254.169.254, a link-local"),
    ("http://2852039166/latest/meta-data/", "169.254.169.254, a link-local"),
    ("http://0xa9fea9fe/latest/meta-data/", "169.254.169.254, a link-local"),
    ("http://0251.0376.0251.0376/latest/meta-data/", "169.254.169.254, a link-local"),
    ("http://[::ffff:169.254.169.254]/latest/", "169.254.169.254, a link-local"),
    ("http://10.1/hook", "10.0.0.1, a private"),
    ("http://0x0a000001/hook", "10.0.0.1, a private"),
    ("http://192.168.257/hook", "192.168.1.1, a private"),
    ("http://１９２.１６８.０.１/hook", "192.168.0.1 is a private"),
    ("http://100.64.1/hook", "100.64.0.1, a shared"),
    ("http://0/hook", "0.0.0.0, the unspecified"),
    ("http://0.0.0.0/hook", "0.0.0.0 is the unspecified"),
    ("http://224.0.0.1/hook", "224.0.0.1 is a multicast"),
    ("http://[::1]/hook", "::1 is a loopback"),
    ("http://[0:0:0:0:0:0:0:1]/hook", "::1 is a loopback"),
    ("http://[::1%25lo]/hook", "is ::1, a loopback"),
    ("http://[fe80::1%25eth0]/hook", "is fe80::1, a link-local"),
    ("http://[fd00:ec2::254]/latest/", "fd00:ec2::254 is a private"),
    ("http://[::]/hook", ":: is the unspecified"),
    ("http://[ff02::1]/hook", "ff02::1 is a multicast"),
    ("http://[::127.0.0.1]/hook", "carrying 127.0.0.1, a loopback"),  # IPv4-compatible
    ("http://[64:ff9b::127.0.0.1]/hook", "carrying 127.0.0.1, a loopback"),  # NAT64
    ("http://[64:ff9b::a9fe:a9fe]/latest/", "carrying 169.254.169.254, a link-local"),
    ("http://[64:ff9b:1::a9fe:a9fe]/latest/", "a local-use NAT64"),
    ("http://[2002:7f00:1::1]/hook", "carrying 127.0.0.1, a loopback"),  # 6to4
    ("http://[2002:a9fe:a9fe::]/latest/", "carrying 169.254.169.254, a link-local"),
    ("http://[2002:c0a8:1::1]/hook", "carrying 192.168.0.1, a private"),
    ("http://localhost/hook", "localhost is a local name"),
    ("http://LOCALHOST./hook", "localhost. is a local name"),
    ("http://ＬＯＣＡＬＨＯＳＴ/hook", "localhost is a local name"),
    ("http://localhost。/hook", "is a local name"),
    ("http://api.localhost./hook", "api.localhost. is a local name"),
    ("http://ｍｅｔａｄａｔａ.google.internal/computeMetadata/v1/", "is a local name"),
    ("http://[::1/hook", "malformed"),
    ("http://[::1]x/hook", "malformed"),
    ("http://example.com:99999/hook", "malformed"),
    ("http://example.com:80:80/hook", "malformed"),
    ("http://ex／ample.com/hook", "malformed"),
    ("http://e\u200bxample.com/hook", "malformed"),
    ("http://127.0.0.1../hook", "not a valid host name"),
    ("http://exa mple.com/hook", "not a valid host name"),
    ("http://%31%32%37.0.0.1/hook", "not a valid IPv4 address"),
    ("http://08.0.0.1/hook", "not a valid IPv4 address"),
    ("http://1.2.3.4.5/hook", "not a valid IPv4 address"),
    ("http://127.0.0.256/hook", "not a valid IPv4 address"),
    ("http://4294967296/hook", "not a valid IPv4 address"),
    ("http://[::ffff:127.1]/hook", "not a valid IPv6 address"),
    ("http://[fe80::1%25eth/0]/hook", "malformed"),
    ("ftp://example.com/hook", "http:// or https://"),
    ("http:///hook", "http:// or https://"),
]

# (URL, the URL delivered to): public targets pass, their host in its one spelling.
PUBLIC = [
    ("https://example.com/hook", "https://example.com/hook"),
    ("https://ＥＸＡＭＰＬＥ.com/hook", "https://example.com/hook"),
    ("https://example。com/hook", "https://example.com/hook"),
    ("https://Example.COM./hook?x=1", "https://example.com/hook?x=1"),
    ("https://münchen.de/hook", "https://xn--mnchen-3ya.de/hook"),
    ("https://xn--mnchen-3ya.de/hook", "https://xn--mnchen-3ya.de/hook"),
    ("https://_hooks.example.com/", "https://_hooks.example.com/"),
    ("http://93.184.216.34:8080/x", "http://93.184.216.34:8080/x"),
    ("http://９３.１８４.２１６.３４/x", "http://93.184.216.34/x"),
    ("http://1572395042/x", "http://93.184.216.34/x"),
    ("http://0x5d.0xb8.0xd8.0x22/x", "http://93.184.216.34/x"),
    ("http://user:pw@93.184.55330/x", "http://user:pw@93.184.216.34/x"),
    ("http://[2606:4700:0:0::1111]/x", "http://[2606:4700::1111]/x"),
    ("http://[::ffff:93.184.216.34]/x", "http://93.184.216.34/x"),
    ("http://[64:ff9b::5db8:d822]/x", "http://[64:ff9b::5db8:d822]/x"),  # NAT64, public v4
]


# ------------------------------------------------------------ the guard alone


@pytest.mark.parametrize(("url", "named"), HOSTILE, ids=[u for u, _ in HOSTILE])
def test_hostile_spelling_is_refused(url: str, named: str) -> None:
    """Each hostile spelling is refused with the default config, naming the problem."""
    with pytest.raises(RefusedTarget) as refused:
        UrlGuard().target(url)
    assert named in str(refused.value)


@pytest.mark.parametrize(("url", "delivered"), PUBLIC, ids=[u for u, _ in PUBLIC])
def test_public_target_passes_in_its_normal_spelling(url: str, delivered: str) -> None:
    """Public names (IDNA ones too) and addresses in any spelling pass, and are
    delivered to with their host in normal form."""
    assert UrlGuard().target(url) == URL(delivered)


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_allowed_address_passes_in_any_spelling(host: str) -> None:
    """webhookAllowedHosts 127.0.0.1 lets every spelling of 127.0.0.1 through, delivered
    to 127.0.0.1 itself."""
    target = UrlGuard(["127.0.0.1"]).target(f"http://{host}:9000/hook?x=1")
    assert target == URL("http://127.0.0.1:9000/hook?x=1")


def test_allowed_hosts_are_matched_in_normal_form() -> None:
    """Allowed hosts and URL hosts meet in one spelling; neighbours stay refused."""
    guard = UrlGuard(["LocalHost", "0x7f000001", "0:0::1", "１０.０.０.５"])
    assert guard.target("http://ＬＯＣＡＬＨＯＳＴ:1/").host == "localhost"
    assert guard.target("http://localhost.:1/").host == "localhost"
    assert guard.target("http://127.0.0.1:1/").host == "127.0.0.1"
    assert guard.target("http://[::1]:1/").raw_host == "::1"
    assert guard.target("http://10.0.5:1/").host == "10.0.0.5"
    for url in ("http://127.2/", "http://[::2]/", "http://10.0.0.6/", "http://a.localhost/"):
        with pytest.raises(RefusedTarget):
            guard.target(url)


@pytest.mark.parametrize(
    ("host", "normal"),
    [
        ("１２７.０.０.１", "127.0.0.1"),
        ("127。0。0。1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.255"),
        ("[::FFFF:127.0.0.1]", "127.0.0.1"),
        ("fe80::1%25eth0", "fe80::1"),
        ("FE80:0::1%eth0", "fe80::1"),
        ("Example.COM.", "example.com"),
        ("Bücher.example", "xn--bcher-kva.example"),
    ],
)
def test_normal_host(host: str, normal: str) -> None:
    """normal_host gives each host its one spelling."""
    assert normal_host(host) == normal


def test_bad_allowed_host_is_a_config_error() -> None:
    """An allowed host that is no host at all fails loudly, naming the setting."""
    with pytest.raises(ValueError, match="webhookAllowedHosts"):
        UrlGuard(["1.2.3.4.5"])


@pytest.mark.parametrize(
    ("address", "named"),
    [
        ("127.0.0.1", "a loopback"),
        ("::ffff:127.0.0.1", "a loopback"),
        ("64:ff9b::a9fe:a9fe", "an IPv6 address carrying 169.254.169.254"),
        ("2002:a00:1::1", "an IPv6 address carrying 10.0.0.1"),
        ("fe80::1%eth0", "a link-local"),
    ],
)
def test_resolved_private_address_is_refused(address: str, named: str) -> None:
    """A name resolving to any spelling of a non-public address is refused at delivery."""
    with pytest.raises(RefusedTarget, match=f"resolves to {address}, {named}"):
        UrlGuard().check_addresses("rebind.example.com", ["93.184.216.34", address])


def test_resolved_allowed_address_passes() -> None:
    """A resolved address that is allowed passes, however the allowed host is spelled."""
    UrlGuard(["127.1"]).check_addresses("rebind.example.com", ["::ffff:127.0.0.1"])
    UrlGuard(["ＲＥＢＩＮＤ.example.com"]).check_addresses("rebind.example.com", ["10.0.0.1"])


# ------------------------------------------------------------ registration over HTTP

# A sample of each family, each through the HTTP API (the table above covers the rest).
REGISTERED = [
    ("http://１２７.０.０.１:{port}/hook", "127.0.0.1 is a loopback"),
    ("http://127。0。0。1:{port}/hook", "127.0.0.1 is a loopback"),
    ("http://１６９.２５４.１６９.２５４/latest/meta-data/", "169.254.169.254 is a link-local"),
    ("http://127.1:{port}/hook", "127.0.0.1, a loopback"),
    ("http://2130706433:{port}/hook", "127.0.0.1, a loopback"),
    ("http://0x7f000001:{port}/hook", "127.0.0.1, a loopback"),
    ("http://0177.0.0.1:{port}/hook", "127.0.0.1, a loopback"),
    ("http://127.0.0.1.:{port}/hook", "127.0.0.1, a loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/hook", "127.0.0.1, a loopback"),
    ("http://[64:ff9b::a9fe:a9fe]/latest/", "carrying 169.254.169.254"),
    ("http://[fe80::1%25eth0]:{port}/hook", "a link-local"),
    ("http://ＬＯＣＡＬＨＯＳＴ:{port}/hook", "is a local name"),
    ("http://[::1:{port}/hook", "not a valid URL: Invalid IPv6 URL"),
]


async def _stored(redis: Redis) -> list[str]:
    return [key async for key in redis.scan_iter(match="*")]


async def test_task_webhook_in_hostile_spellings_is_a_400(api: Api, redis: Redis) -> None:
    """Creating a task whose webhook is a hostile spelling is a 400 naming the field and
    the problem; nothing is stored."""
    before = await _stored(redis)
    for webhook, named in REGISTERED:
        body = {"command": "A", "payload": {}, "webhook": webhook.format(port=free_port())}
        status, answer, _ = await api.call("POST", TASKS, "producer", body)
        assert status == 400, (webhook, answer)
        assert answer["field"] == "webhook", answer
        assert named in answer["error"], answer
    assert await _stored(redis) == before


async def test_subscription_in_hostile_spellings_is_a_400(api: Api, redis: Redis) -> None:
    """Subscribing with a hostile spelling of callbackUrl is a 400 naming the field and
    the problem; nothing is stored."""
    before = await _stored(redis)
    for url, named in REGISTERED:
        body = {"callbackUrl": url.format(port=free_port())}
        status, answer, _ = await api.call("POST", SUBS, "worker", body)
        assert status == 400, (url, answer)
        assert answer["field"] == "callbackUrl", answer
        assert named in answer["error"], answer
    assert await _stored(redis) == before


# ------------------------------------------------------------ delivery to a real receiver


class Receiver(LoopbackServer):
    """A webhook receiver on 127.0.0.1 that records every request's path and body."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, Any]] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, json.loads(await request.read())))
        return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.stop()


async def _post_all(guard: UrlGuard, port: int) -> dict[str, str]:
    """POSTs to every loopback spelling through a WebhookClient; outcome per spelling."""
    client = WebhookClient(secret=None, guard=guard)
    await client.start()
    try:
        outcomes = {}
        for n, host in enumerate(LOOPBACK_SPELLINGS):
            url = f"http://{host}:{port}/{n}"
            delivery = await client.post(
                url, b'{"n": %d}' % n, kind="task_result", command="G", timeout=5
            )
            outcomes[host] = delivery.outcome
        return outcomes
    finally:
        await client.aclose()


async def test_delivery_in_hostile_spellings_reaches_nothing(receiver: Receiver) -> None:
    """With the default config, no spelling of 127.0.0.1 gets a request to a receiver
    there: every delivery is refused."""
    outcomes = await _post_all(UrlGuard(), receiver.port)
    assert outcomes == dict.fromkeys(LOOPBACK_SPELLINGS, "refused")
    assert receiver.requests == []


async def test_allowed_delivery_connects_to_the_checked_address(receiver: Receiver) -> None:
    """With 127.0.0.1 allowed, every spelling of it is delivered -- to 127.0.0.1, the
    address checked (aiohttp alone refuses or resolves some of these spellings)."""
    outcomes = await _post_all(UrlGuard(["127.0.0.1"]), receiver.port)
    assert outcomes == dict.fromkeys(LOOPBACK_SPELLINGS, "success")
    assert [path for path, _ in receiver.requests] == [
        f"/{n}" for n in range(len(LOOPBACK_SPELLINGS))
    ]


async def test_callback_registered_when_allowed_is_refused_at_delivery(
    start_daemon: StartDaemon, http: aiohttp.ClientSession, redis: Redis, receiver: Receiver
) -> None:
    """A callback to a hostile spelling registered while 127.0.0.1 was allowed is refused
    when a daemon without that allowance delivers it: abandoned, no request sent."""
    fast = {
        "result_webhook_base_backoff_seconds": 0.05,
        "result_webhook_max_backoff_seconds": 0.2,
        "result_webhook_timeout_seconds": 2.0,
    }
    webhook = f"http://１２７.０.０.１:{receiver.port}/hook"
    allowing = await start_daemon(**fast, webhook_allowed_hosts=("127.0.0.1",))
    before = Api(http, allowing.url)
    delivered = await before.create("A", webhook=webhook)
    await _complete(before, delivered["id"])
    await wait_for(lambda: len(receiver.requests) == 1, message="the allowed callback")
    assert receiver.requests[0][1]["taskId"] == delivered["id"]
    refused = await before.create("A", webhook=webhook)
    await allowing.stop()

    after = Api(http, (await start_daemon(**fast)).url)
    await _complete(after, refused["id"])

    async def abandoned() -> list[dict[str, Any]]:
        _, body, _ = await after.call("GET", ADMIN_CALLBACKS, "admin")
        return list(body["abandoned"])

    [entry] = await wait_for(abandoned, message="the refused callback abandoned")
    assert entry["taskId"] == refused["id"]
    assert entry["attempts"] == 1
    assert "127.0.0.1 is a loopback address" in entry["lastError"]
    assert len(receiver.requests) == 1
    assert await redis.zcard(keys.outbox(ACME)) == 0


async def _complete(api: Api, task_id: str) -> None:
    task = await api.claim(commands=["A"])
    assert task is not None and task["id"] == task_id, task
    status, body = await api.result(task_id)
    assert status == 200, body
