"""The daemon: wires the store, the actors and the transports, and runs them until
a signal, in the order SPEC §1 gives for start and shutdown."""

from __future__ import annotations

import asyncio
import resource
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from prometheus_async import aio
from prometheus_client import CollectorRegistry
from redis import exceptions as rx
from redis.asyncio import Redis

from codeq import metrics, systemd
from codeq.actors.base import Actor, Supervisor, first_of
from codeq.actors.cleaner import SubscriptionCleaner
from codeq.actors.dispatcher import CallbackDispatcher
from codeq.actors.firer import ScheduleFirer
from codeq.actors.janitor import Janitor
from codeq.actors.mover import DelayedMover
from codeq.actors.notifier import Notifier
from codeq.actors.reaper import LeaseReaper
from codeq.actors.scheduler import Scheduler
from codeq.actors.watchdog import WatchdogPinger
from codeq.artifacts import ArtifactStore
from codeq.auth import ReloadableAuthenticator
from codeq.auth.factory import Auth, build_auth
from codeq.config import Config, ConfigError
from codeq.domain import BackoffPolicy, QueueStats, RetryPolicy, Unavailable
from codeq.metrics import QueueCollector, StoreSnapshot, exposition
from codeq.observability import configure_logging
from codeq.ratelimit import Bucket, RateLimiter, Scope
from codeq.reload import Changes, yaml_keys
from codeq.service import Service, ServiceSettings
from codeq.store.client import ServerInfo, open_client
from codeq.store.embedded import EmbeddedRedis
from codeq.store.store import Store
from codeq.subscriptions import SubscriptionSettings
from codeq.transport import Transport, TransportContext, load_transport
from codeq.webhooks.breaker import CircuitBreakers
from codeq.webhooks.client import WebhookClient
from codeq.webhooks.guard import UrlGuard

log = structlog.get_logger("codeq.daemon")


def retry_policy(config: Config) -> RetryPolicy:
    return RetryPolicy(
        policy=BackoffPolicy(config.backoff_policy),
        base_ms=config.backoff_base_seconds * 1000,
        max_ms=config.backoff_max_seconds * 1000,
    )


def subscription_settings(config: Config) -> SubscriptionSettings:
    return SubscriptionSettings(
        default_ttl_seconds=config.subscription_default_ttl_seconds,
        max_ttl_seconds=config.subscription_max_ttl_seconds,
        min_interval_floor_seconds=config.subscription_min_interval_floor_seconds,
    )


def webhook_actors(
    config: Config, store: Store, scheduler: Scheduler, client: WebhookClient
) -> tuple[Notifier, CallbackDispatcher, SubscriptionCleaner]:
    """The three webhook actors: notifier, callback dispatcher, subscription cleaner."""
    notifier = Notifier(
        store,
        client,
        timeout=config.notify_timeout_seconds,
        concurrency=config.notify_concurrency,
    )
    scheduler.on_queue_nonempty = notifier.queue_became_ready
    dispatcher = CallbackDispatcher(
        store,
        client,
        CircuitBreakers(config.webhook_breaker_threshold, config.webhook_breaker_cooldown_seconds),
        max_attempts=config.result_webhook_max_attempts,
        base_backoff_seconds=config.result_webhook_base_backoff_seconds,
        max_backoff_seconds=config.result_webhook_max_backoff_seconds,
        timeout=config.result_webhook_timeout_seconds,
        concurrency=config.result_webhook_concurrency,
    )
    cleaner = SubscriptionCleaner(
        store, scheduler, interval_seconds=config.subscription_cleanup_interval_seconds
    )
    return notifier, dispatcher, cleaner


def rate_limits(config: Config) -> dict[Scope, Bucket | None]:
    """The configured token bucket of each rate-limit scope (None: no limit)."""
    return {
        scope: Bucket.configured(
            getattr(config, f"rate_limit_{scope.value}_per_second"),
            getattr(config, f"rate_limit_{scope.value}_burst"),
        )
        for scope in Scope
    }


class Daemon:
    """One codeq process: its store connection, actors and transports.

    reload_config re-reads the config the daemon started from (file, environment and
    flags) on SIGHUP; without it SIGHUP changes nothing."""

    def __init__(self, config: Config, reload_config: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reload_config = reload_config
        self.origin = secrets.token_hex(6)  # tells this daemon's pub/sub messages apart
        self.embedded: EmbeddedRedis | None = None
        self.store: Store | None = None
        self.server: ServerInfo | None = None  # what the store said it is
        self.supervisor: Supervisor | None = None
        self.service: Service | None = None
        self.limiter: RateLimiter | None = None
        self.transports: list[Transport] = []
        self.addresses: list[str] = []
        self.auth: Auth | None = None
        self.authenticator: ReloadableAuthenticator | None = None  # what transports hold
        self.webhooks: WebhookClient | None = None
        self.dev_token: str | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()  # SIGHUP
        self._ready = asyncio.Event()  # READY=1 sent
        self._metrics_registry = CollectorRegistry(auto_describe=True)
        self._queue_gauges: QueueCollector | None = None

    # ------------------------------------------------------------ start

    async def start(self) -> None:
        """Store first, then actors, then transports: nothing listens before the
        store is connected and the scripts are loaded."""
        config = self.config
        for note in config.notes:
            log.warning("config warning", detail=note)
        raise_open_file_limit()
        redis = await self._connect_store()
        self.store = Store(
            redis,
            origin=self.origin,
            history_limit=config.history_limit,
            idempotency_ttl_ms=config.idempotency_ttl_seconds * 1000,
            timed=config.metrics_enabled,
            timeout=config.store_timeout_seconds,
        )
        await self.store.connect()
        retry = retry_policy(config)
        scheduler = Scheduler(redis, self.origin)
        mover = DelayedMover(self.store, scheduler)
        reaper = LeaseReaper(self.store, scheduler, retry)
        guard = UrlGuard(config.webhook_allowed_hosts)
        self.webhooks = WebhookClient(secret=config.webhook_hmac_secret, guard=guard)
        await self.webhooks.start()
        notifier, dispatcher, cleaner = webhook_actors(config, self.store, scheduler, self.webhooks)
        firer = ScheduleFirer(
            self.store, scheduler, max_attempts_default=config.max_attempts_default
        )
        actors: list[Actor] = [scheduler, mover, reaper, notifier, dispatcher, cleaner, firer]
        artifacts = ArtifactStore(
            Path(config.local_artifacts_dir or config.state_directory() / "artifacts"),
            max_bytes=config.artifact_max_bytes,
        )
        if config.janitor_interval_seconds > 0:
            actors.append(
                Janitor(
                    self.store,
                    interval_seconds=config.janitor_interval_seconds,
                    retention_seconds=config.retention_seconds,
                    artifacts=artifacts,
                )
            )
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            actors.append(WatchdogPinger(watchdog, self._ready))
        self.supervisor = Supervisor(actors)
        self.supervisor.start()
        await self._until_listening(scheduler)
        self.service = Service(
            self.store,
            scheduler,
            mover,
            reaper,
            ServiceSettings(
                default_lease_seconds=config.default_lease_seconds,
                max_attempts_default=config.max_attempts_default,
                retry=retry,
                retention_seconds=config.retention_seconds,
                subscriptions=subscription_settings(config),
            ),
            guard=guard,
            dispatcher=dispatcher,
            artifacts=artifacts,
        )
        self.service.subscriptions.changed = cleaner.poke
        self.service.schedules.due_at = firer.due_at
        self.limiter = RateLimiter(self.store, rate_limits(config))
        self.auth = build_auth(config)
        self.dev_token = self.auth.dev_token
        await self.auth.start()
        self.authenticator = ReloadableAuthenticator(self.auth.authenticator)
        context = TransportContext(
            self.service,
            self.authenticator,
            config,
            self.readiness,
            self.limiter,
            metrics=self.metrics if config.metrics_enabled else None,
        )
        for name in config.transports:
            transport = load_transport(name)(context)
            self.addresses += await transport.start()
            self.transports.append(transport)
        log.info(
            "codeq ready",
            listening=self.addresses,
            store=self._store_label(),
            dev_mode=config.dev_mode,
        )
        systemd.notify("READY=1", f"STATUS={self._status()}")
        self._ready.set()

    async def _connect_store(self) -> Redis:
        """The store client, once the server has said what it is (see store.client)."""
        config = self.config
        url, password = config.redis_addr, config.redis_password
        if not url:
            self.embedded = EmbeddedRedis(
                config.state_directory(), password=password, binary=config.redis_server_path
            )
            address = await self.embedded.start()
            url, password = address.url, address.password
        elif "://" not in url:
            url = f"redis://{url}"
        try:
            redis, self.server = await open_client(
                url,
                password=password,
                connect_timeout=config.store_timeout_seconds,
                max_connections=config.store_max_connections,
            )
        except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
            raise Unavailable(f"store unavailable: {exc}") from exc
        log.info(
            "store connected", server=self.server.label(), redis_version=self.server.redis_version
        )
        return redis

    def _store_label(self) -> str:
        where = "embedded" if self.embedded else "external"
        return f"{where} {self.server.label()}" if self.server else where

    @staticmethod
    async def _until_listening(scheduler: Scheduler, timeout: float = 5.0) -> None:
        """Serve only once the scheduler hears the ready channel: a task created before
        would make its queue non-empty unheard, and its subscribers never be told."""
        try:
            async with asyncio.timeout(timeout):
                await scheduler.listening.wait()
        except TimeoutError:
            log.warning("ready channel not subscribed yet; serving anyway", waited=timeout)

    def _status(self) -> str:
        """The one-line status systemctl shows."""
        return f"serving on {', '.join(self.addresses)}, store {self._store_label()}"

    # ------------------------------------------------------------ metrics

    async def metrics(self) -> tuple[bytes, str]:
        """GET /metrics: the process's metrics and this daemon's queue gauges, read
        from the store now (bounded by metricsScrapeTimeoutSeconds)."""
        if self._queue_gauges is None:
            self._queue_gauges = QueueCollector(
                self._store_snapshot, timeout=self.config.metrics_scrape_timeout_seconds
            )
            self._metrics_registry.register(self._queue_gauges)
        # prometheus-async times the awaitable (the store read), not the encoding
        await aio.time(metrics.SCRAPE_STORE_READ, self._queue_gauges.refresh())
        return exposition(self._metrics_registry)

    async def _store_snapshot(self) -> StoreSnapshot:
        assert self.store is not None
        queues: list[tuple[str | None, QueueStats]] = []
        subscriptions: list[tuple[str | None, str, int]] = []
        now = time.time_ns() // 1_000_000
        for tag in await self.store.tenants():
            name = await self.store.tenant_name(tag) if self.config.metrics_tenant_label else None
            queues += [(name, stats) for stats in await self.store.queue_stats(tag)]
            counts = await self.store.subscription_counts(tag, now_ms=now)
            subscriptions += [(name, command, n) for command, n in counts.items()]
        return StoreSnapshot(queues, subscriptions)

    # ------------------------------------------------------------ health

    async def readiness(self) -> dict[str, Any]:
        """Store reachable and every actor running (else degraded)."""
        report: dict[str, Any] = {"status": "ready"}
        try:
            assert self.store is not None
            await asyncio.wait_for(self.store.ping(), timeout=1.0)
            report["store"] = "ok"
            if self.store.full():  # PING is answered, writes are not
                report["store"] = "out of memory"
                report["status"] = "unavailable"
        except (Unavailable, TimeoutError):
            report["store"] = "unreachable"
            report["status"] = "unavailable"
        assert self.supervisor is not None
        report["actors"] = self.supervisor.health()
        if not self.supervisor.healthy() and report["status"] == "ready":
            report["status"] = "degraded"
        if self.service is not None and self.service.draining:
            report["status"] = "draining"
        return report

    # ------------------------------------------------------------ run and stop

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self) -> int:
        """Serves until SIGTERM/SIGINT (exit 0) or a fatal failure (exit 1); SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        assert self.supervisor is not None
        fatal = [self.supervisor.failed]
        if self.embedded is not None:
            fatal.append(self.embedded.failed)
        while not (self._stop.is_set() or any(event.is_set() for event in fatal)):
            await first_of([self._stop, self._reload, *fatal])
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self.reload()
        code = 0 if self._stop.is_set() else 1
        if code:
            log.error("a component failed past its restart budget; exiting for a restart")
            systemd.notify("STATUS=a component failed past its restart budget; exiting")
        await self.stop()
        return code

    # ------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """Re-reads the config the daemon started from and applies, in place, what can
        change while it runs: log level and format, static tokens, JWKS settings.
        Connections and actors are untouched. A bad config changes nothing."""
        if self._reload_config is None:
            log.warning("reload requested, but this daemon has no config source to reload")
            return False
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            reloaded = self._reload_config()
            changes = Changes.between(self.config, reloaded)
            auth = build_auth(reloaded) if changes.auth else None
        except (ConfigError, OSError) as exc:
            log.error("reload failed; the running settings are kept", error=str(exc))
            systemd.notify("READY=1", f"STATUS={self._status()} (last reload failed)")
            return False
        if changes.logging:
            configure_logging(reloaded.log_level, reloaded.log_format)
        if auth is not None:
            await self._swap_auth(auth)
        self.config = changes.applied_to(self.config, reloaded)
        log.info(
            "reloaded",
            changed=yaml_keys(changes.reloadable),
            restart_needed=yaml_keys(changes.restart_needed),
            log_level=self.config.log_level,
        )
        log.debug("effective config after reload", config=self.config.masked())
        systemd.notify("READY=1", f"STATUS={self._status()}")
        return True

    async def _swap_auth(self, auth: Auth) -> None:
        """Swaps in a new authenticator (one assignment), then closes the old one's
        JWKS sessions. Its key sets are fetched first, as at start."""
        await auth.start()
        assert self.authenticator is not None
        old, self.auth = self.auth, auth
        self.authenticator.current = auth.authenticator
        self.dev_token = auth.dev_token
        if old is not None:
            await old.aclose()

    async def stop(self) -> None:
        """Ordered shutdown: stop accepting connections, stop handing out leases, let
        in-flight requests finish within the grace period, stop the actors, close the
        store, stop the embedded store."""
        grace = self.config.shutdown_grace_seconds
        systemd.notify("STOPPING=1", f"STATUS=draining in-flight requests (up to {grace:g} s)")
        log.info("shutting down", grace_seconds=grace)
        for transport in self.transports:
            await transport.stop_accepting()
        if self.service is not None:
            self.service.draining = True
            self.service.scheduler.wake_all()
        for transport in self.transports:
            await transport.drain(self.config.shutdown_grace_seconds)
        self.transports.clear()
        if self.auth is not None:
            await self.auth.aclose()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.webhooks is not None:
            await self.webhooks.aclose()
        if self.store is not None:
            await self.store.close()
        if self.embedded is not None:
            await self.embedded.stop()
        log.info("stopped")


def raise_open_file_limit() -> int:
    """Raises this process's open-file limit to its hard limit (each connection is
    one descriptor; the usual soft limit of 1,024 is far below what a daemon holds);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1_048_576)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # a container may forbid it
            log.warning("open-file limit not raised", soft=soft, hard=hard, error=str(exc))
    return soft
