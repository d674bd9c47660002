"""Worker subscriptions: the service side of "tell me when there is work".

A worker registers a callback URL for some commands; while the subscription lives
(renewed by heartbeats), the notifier POSTs to it when one of those queues goes
from empty to non-empty. Rules (SPEC §4, §7):

- the token needs the `codeq:subscribe` scope; `eventTypes` must be within the
  token's eventTypes (default: the token's own; `*` only for a wildcard token);
- a token with a `workerGroup` subscribes in that group: `groupId` defaults to it
  and may not name another;
- `deliveryMode` group needs a `groupId`; `minIntervalSeconds` (default 5) is
  raised to the configured floor; `ttlSeconds` defaults to 300;
- the callback URL passes the outbound URL guard.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from codeq.domain import (
    COMMAND_RE,
    TASK_ID_RE,
    DeliveryMode,
    Forbidden,
    Invalid,
    NewSubscription,
    NotFound,
    Principal,
    Subscription,
)
from codeq.store import keys
from codeq.store.store import Store
from codeq.webhooks.guard import RefusedTarget, UrlGuard

ALL = "*"


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    default_ttl_seconds: int = 300
    max_ttl_seconds: int = 86_400
    default_min_interval_seconds: float = 5.0
    min_interval_floor_seconds: float = 1.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Subscriptions:
    """Create, renew, delete and list worker subscriptions."""

    def __init__(self, store: Store, guard: UrlGuard, settings: SubscriptionSettings) -> None:
        self.store = store
        self.guard = guard
        self.settings = settings
        # Told after a subscription was added or removed (the cleaner plans its next
        # sweep by the earliest expiry).
        self.changed: Callable[[], None] = lambda: None

    async def subscribe(self, who: Principal, new: NewSubscription) -> Subscription:
        _require_subscriber(who)
        try:
            self.guard.check(new.callback_url)
        except RefusedTarget as exc:
            raise Invalid(f"callbackUrl refused: {exc}", field="callbackUrl") from None
        event_types = self._event_types(who, new.event_types)
        group = self._group(who, new)
        ttl = self._ttl(new.ttl_seconds)
        interval = new.min_interval_seconds
        if interval is None:
            interval = self.settings.default_min_interval_seconds
        interval = max(interval, self.settings.min_interval_floor_seconds)
        tag = keys.tenant_tag(who.tenant)
        now = _now_ms()
        subscription = Subscription(
            id=keys.new_subscription_id(tag),
            callback_url=new.callback_url,
            event_types=event_types,
            delivery_mode=new.delivery_mode,
            group_id=group,
            min_interval_seconds=interval,
            expires_at_ms=now + ttl * 1000,
            created_at_ms=now,
            worker_id=who.subject,
        )
        await self.store.register_tenant(tag, who.tenant)
        await self.store.subscribe(tag, subscription, ttl_ms=ttl * 1000)
        self.changed()
        return subscription

    async def heartbeat(self, who: Principal, subscription_id: str, ttl_seconds: int | None) -> int:
        """Renews a subscription of the caller; returns its new expiry (ms)."""
        _require_subscriber(who)
        ttl_ms = self._ttl(ttl_seconds) * 1000 if ttl_seconds is not None else 0
        return await self.store.renew_subscription(
            self._tag_for(who, subscription_id),
            subscription_id,
            worker_id=who.subject,
            ttl_ms=ttl_ms,
            now_ms=_now_ms(),
        )

    async def unsubscribe(self, who: Principal, subscription_id: str) -> None:
        _require_subscriber(who)
        await self.store.unsubscribe(
            self._tag_for(who, subscription_id),
            subscription_id,
            worker_id=who.subject,
            now_ms=_now_ms(),
        )
        self.changed()

    async def list(self, who: Principal) -> list[Subscription]:
        """The live subscriptions of the caller's tenant."""
        _require_subscriber(who)
        return await self.store.subscriptions(keys.tenant_tag(who.tenant), now_ms=_now_ms())

    # ------------------------------------------------------------ rules

    @staticmethod
    def _event_types(who: Principal, requested: tuple[str, ...]) -> tuple[str, ...]:
        if not requested:
            if ALL in who.event_types:
                return (ALL,)
            if not who.event_types:
                raise Forbidden("the token allows no eventTypes")
            return tuple(sorted(who.event_types))
        for command in requested:
            if command == ALL:
                if ALL not in who.event_types:
                    raise Forbidden("eventTypes '*' needs a token whose eventTypes are '*'")
            elif not COMMAND_RE.fullmatch(command):
                raise Invalid(
                    f"eventTypes entry {command!r} is not a valid command", field="eventTypes"
                )
            elif not who.may_handle(command):
                raise Forbidden(f"command {command!r} is not in the token's eventTypes")
        return tuple(dict.fromkeys(requested))

    @staticmethod
    def _group(who: Principal, new: NewSubscription) -> str | None:
        group = new.group_id
        if who.worker_group:
            if group is not None and group != who.worker_group:
                raise Forbidden(
                    f"groupId must be the token's workerGroup {who.worker_group!r}",
                    field="groupId",
                )
            group = who.worker_group
        if new.delivery_mode is DeliveryMode.GROUP and not group:
            raise Invalid("groupId is required when deliveryMode is group", field="groupId")
        return group

    def _ttl(self, ttl_seconds: int | None) -> int:
        if ttl_seconds is None:
            return self.settings.default_ttl_seconds
        if not 1 <= ttl_seconds <= self.settings.max_ttl_seconds:
            raise Invalid(
                f"ttlSeconds must be between 1 and {self.settings.max_ttl_seconds},"
                f" got {ttl_seconds}",
                field="ttlSeconds",
            )
        return ttl_seconds

    @staticmethod
    def _tag_for(who: Principal, subscription_id: str) -> str:
        """Another tenant's subscription is simply not found."""
        if not TASK_ID_RE.fullmatch(subscription_id):
            raise Invalid("invalid subscription id", field="id")
        tag = keys.tenant_tag(who.tenant)
        if keys.tag_of(subscription_id) != tag:
            raise NotFound("subscription not found (or expired)")
        return tag


def _require_subscriber(who: Principal) -> None:
    if not who.worker:
        raise Forbidden("a worker token is required")
    if "codeq:subscribe" not in who.scopes:
        raise Forbidden("the token lacks the 'codeq:subscribe' scope", scope="codeq:subscribe")
