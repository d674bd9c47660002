"""GET /metrics: codeQ's metric names with values that match a scripted workload,
queue gauges read from the store at scrape time (and a bounded answer when the
store hangs), request metrics, and shipped dashboards/alerts that name real metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import yaml
from conftest import Api, RunningDaemon, StoreProcess, wait_for
from prometheus_client.parser import text_string_to_metric_families

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(http: aiohttp.ClientSession, daemon: RunningDaemon) -> Samples:
    async with http.get(daemon.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_counters_and_gauges_follow_a_workload(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], http: aiohttp.ClientSession
) -> None:
    """Created/claimed/completed counts, queue depths, the DLQ and an expired lease
    show in /metrics as the workload made them."""
    daemon = await start_daemon(backoff_base_seconds=60)
    api = Api(http, daemon.url)
    before = await scrape(http, daemon)
    for _ in range(3):
        await api.create("MA")
    await api.create("MA", maxAttempts=1)
    await api.create("MB", delaySeconds=3600)
    done = await api.claim(commands=["MA"])
    assert (await api.result(done["id"]))[0] == 200
    failed = await api.claim(commands=["MA"])
    status, _ = await api.result(failed["id"], status="FAILED", error="boom")
    assert status == 200
    expiring = await api.claim(commands=["MA"], leaseSeconds=1)
    doomed = await api.claim(commands=["MA"])  # the maxAttempts=1 task: a nack dead-letters it
    nacked, body, _ = await api.call("POST", f"/v1/codeq/tasks/{doomed['id']}/nack", "worker", {})
    assert nacked == 200 and body["status"] == "dlq"
    await api.create("MA")  # one left ready

    async def expired() -> bool:
        samples = await scrape(http, daemon)
        return value(samples, "codeq_lease_expired_total", command="MA") > value(
            before, "codeq_lease_expired_total", command="MA"
        )

    await wait_for(expired, timeout=5, message="the expired lease counted")
    after = await scrape(http, daemon)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("codeq_task_created_total", command="MA") == 5
    assert delta("codeq_task_created_total", command="MB") == 1
    assert delta("codeq_task_claimed_total", command="MA") == 4
    assert delta("codeq_task_completed_total", command="MA", status="COMPLETED") == 1
    assert delta("codeq_task_completed_total", command="MA", status="FAILED") == 2
    assert delta("codeq_task_processing_latency_seconds_count", command="MA", status="FAILED") == 2
    assert delta("codeq_lease_expired_total", command="MA") == 1
    # gauges: the expired task was retried with a 60 s backoff, so it waits delayed
    assert value(after, "codeq_queue_depth", command="MA", queue="ready") == 1
    assert value(after, "codeq_queue_depth", command="MA", queue="delayed") == 1
    assert value(after, "codeq_queue_depth", command="MA", queue="in_progress") == 0
    assert value(after, "codeq_queue_depth", command="MA", queue="dlq") == 1
    assert value(after, "codeq_dlq_depth", command="MA") == 1
    assert value(after, "codeq_queue_depth", command="MB", queue="delayed") == 1
    assert value(after, "codeq_queue_oldest_ready_age_seconds", command="MA") >= 0
    assert value(after, "codeq_store_up") == 1
    assert expiring["id"] not in (done["id"], failed["id"], doomed["id"])


async def test_request_metrics_by_route_and_status(
    daemon: RunningDaemon, api: Api, http: aiohttp.ClientSession
) -> None:
    """HTTP requests are counted by route pattern (no task ids) and status."""
    task = await api.create("RM")
    route = "/v1/codeq/tasks/{id}"
    before = await scrape(http, daemon)
    for _ in range(3):
        assert (await api.get(task["id"]))[0] == 200
    assert (await api.get(task["id"][:-3] + "zzz"))[0] == 404
    after = await scrape(http, daemon)
    counted = value(after, "codeq_http_requests_total", method="GET", route=route, status="200")
    assert (
        counted
        - value(before, "codeq_http_requests_total", method="GET", route=route, status="200")
        == 3
    )
    assert value(after, "codeq_http_requests_total", method="GET", route=route, status="404") >= 1
    assert not any(task["id"] in dict(labels).get("route", "") for _, labels in after)
    assert value(after, "codeq_store_latency_seconds_count", operation="create") >= 1


async def test_tenant_label_only_when_configured(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], http: aiohttp.ClientSession
) -> None:
    """Queue gauges carry no tenant label unless metricsTenantLabel is on."""
    plain = await start_daemon()
    await Api(http, plain.url).create("TL")
    await Api(http, plain.url).create("TL", who="producer_globex")
    samples = await scrape(http, plain)
    assert value(samples, "codeq_queue_depth", command="TL", queue="ready") == 2
    labelled = await start_daemon(metrics_tenant_label=True)
    samples = await scrape(http, labelled)
    assert value(samples, "codeq_queue_depth", tenant="acme", command="TL", queue="ready") == 1
    assert value(samples, "codeq_queue_depth", tenant="globex", command="TL", queue="ready") == 1


async def test_metrics_can_be_turned_off(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], http: aiohttp.ClientSession
) -> None:
    """With metricsEnabled false, /metrics is a 404 and the API still works."""
    daemon = await start_daemon(metrics_enabled=False)
    async with http.get(daemon.url + "/metrics") as resp:
        assert resp.status == 404
        assert "metricsEnabled" in (await resp.json())["error"]
    await Api(http, daemon.url).create("OFF")


async def test_metrics_answer_in_time_when_the_store_hangs(
    own_store: StoreProcess,
    daemons_on: Callable[..., Awaitable[RunningDaemon]],
    http: aiohttp.ClientSession,
) -> None:
    """A frozen store (SIGSTOP) makes /metrics answer within its scrape timeout, with
    codeq_store_up 0 and no stale queue samples; it recovers when the store does."""
    daemon = await daemons_on(own_store.url, metrics_scrape_timeout_seconds=0.3)
    await Api(http, daemon.url).create("HANG")
    assert value(await scrape(http, daemon), "codeq_store_up") == 1
    own_store.freeze()
    try:
        started = time.monotonic()
        samples = await scrape(http, daemon)
        elapsed = time.monotonic() - started
    finally:
        own_store.thaw()
    assert elapsed < 1.5, f"/metrics took {elapsed:.2f}s with the store frozen"
    assert value(samples, "codeq_store_up") == 0
    assert not any(name == "codeq_queue_depth" for name, _ in samples)
    assert any(name == "codeq_task_created_total" for name, _ in samples)

    async def recovered() -> bool:
        return value(await scrape(http, daemon), "codeq_store_up") == 1

    await wait_for(recovered, timeout=10, message="codeq_store_up back to 1")


# ---------------------------------------------------------------- shipped files

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
_NOT_OURS = {"up"}  # Prometheus' own


def _expressions() -> Iterator[tuple[str, str]]:
    rules = yaml.safe_load((CONFIG_DIR / "prometheus" / "codeq-alerts.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule['alert']}", rule["expr"]
    import json

    dashboard = json.loads((CONFIG_DIR / "grafana" / "codeq-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']!r}", target["expr"]


async def test_dashboard_and_alerts_name_real_metrics(
    daemon: RunningDaemon, http: aiohttp.ClientSession
) -> None:
    """Every metric named in the Grafana dashboard and the alert rules is one the daemon
    exposes, with a suffix its type has."""
    async with http.get(daemon.url + "/metrics") as resp:
        families = {f.name: f.type for f in text_string_to_metric_families(await resp.text())}
    exposed = {
        name + suffix for name, kind in families.items() for suffix in _SUFFIXES.get(kind, ("",))
    }
    checked = 0
    for where, expr in _expressions():
        for name in re.findall(r"\b(codeq_[a-z0-9_]+)", expr):
            assert name in exposed, f"{where}: {name} is not a metric codeq exposes"
            checked += 1
    assert checked >= 20


async def test_subscriptions_active_is_read_at_scrape_time(
    daemon: RunningDaemon, api: Api, http: aiohttp.ClientSession
) -> None:
    """codeq_subscriptions_active counts live subscriptions in the store when scraped:
    a new subscription shows at once, a deleted one is gone at once."""
    body = {"callbackUrl": "https://example.com/hook", "eventTypes": ["SUBM"]}
    status, sub, _ = await api.call("POST", "/v1/codeq/workers/subscriptions", "worker", body)
    assert status == 200, sub
    assert value(await scrape(http, daemon), "codeq_subscriptions_active", command="SUBM") == 1
    path = f"/v1/codeq/workers/subscriptions/{sub['id']}"
    assert (await api.call("DELETE", path, "worker"))[0] == 204
    assert value(await scrape(http, daemon), "codeq_subscriptions_active", command="SUBM") == 0


async def test_a_scrape_times_its_store_read(
    start_daemon: Callable[..., Awaitable[RunningDaemon]], http: aiohttp.ClientSession
) -> None:
    """Each scrape's store read is timed (prometheus-async's aio.time) into
    codeq_metrics_store_read_seconds, so an operator sees what a scrape costs."""
    daemon = await start_daemon()
    first = value(await scrape(http, daemon), "codeq_metrics_store_read_seconds_count")
    second = value(await scrape(http, daemon), "codeq_metrics_store_read_seconds_count")
    assert second == first + 1
