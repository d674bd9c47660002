"""The scheduler: owns the long-poll waiters and wakes them when work is ready."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import structlog
from redis import exceptions as rx
from redis.asyncio import Redis

from codeq.actors.base import Actor, raise_if_cancelled
from codeq.store import keys

log = structlog.get_logger("codeq.scheduler")

ALL = "*"  # a waiter for every command of its tenant
EVERY = 1 << 30  # became_ready's count when it is not known: wake every waiter


class Waiter:
    """One claim request waiting for work on one or more queues."""

    __slots__ = ("_event", "claiming", "keys")

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        self.keys = keys
        self._event = asyncio.Event()
        self.claiming = False  # woken, and trying to claim (until it waits again)

    @property
    def woken(self) -> bool:
        return self._event.is_set()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, deadline: float) -> bool:
        """Waits for a wake-up until the loop-time deadline; False when it passed."""
        self.claiming = False
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            async with asyncio.timeout(remaining):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        self.claiming = True
        return True


class WaiterHandle:
    """What a claim holds while it waits: its waiter, and a way to pass the baton."""

    def __init__(self, scheduler: Scheduler, waiter: Waiter) -> None:
        self._scheduler = scheduler
        self._waiter = waiter

    async def wait(self, deadline: float) -> bool:
        return await self._waiter.wait(deadline)

    def pass_on(self) -> None:
        """After a successful claim more work may be ready: wake the next waiter
        (never this one, which is still registered and about to return) -- unless
        another waiter of the queue is already awake or claiming: it carries the
        baton on, and the oldest waiters keep their turn."""
        for key in self._waiter.keys:
            if not self._scheduler.awake_besides(key, self._waiter):
                self._scheduler.wake(key, 1, skip=self._waiter)


class Scheduler(Actor):
    """Matches claim requests to ready work.

    Waiters queue per (tenant, command) in arrival order, so the oldest is woken
    first. Work made ready in this process arrives through a bounded inbox; work made
    ready by another daemon arrives as a store pub/sub message. A local event says
    how many tasks became ready and wakes that many waiters; another daemon's
    announces only that a queue became non-empty, so a waiter that claims something
    wakes the next (`pass_on`), which carries the wake-up along a burst.
    """

    name = "scheduler"

    def __init__(self, redis: Redis, origin: str, inbox_size: int = 10_000) -> None:
        super().__init__()
        self._redis = redis
        self._origin = origin
        self._waiters: dict[tuple[str, str], deque[Waiter]] = {}
        self._inbox: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue(maxsize=inbox_size)
        self._overflowed = False
        # Told when one of this daemon's scripts made a queue non-empty (the notifier).
        self.on_queue_nonempty: Callable[[str, str], None] | None = None
        # Set once the ready channel is subscribed: this daemon's own ready events
        # (which drive the notifier) published before then are never heard.
        self.listening = asyncio.Event()

    # ------------------------------------------------------------ inputs

    def became_ready(self, tag: str, command: str, count: int = 1) -> None:
        """`count` tasks became ready in a queue (EVERY: an unknown number, e.g. a
        resumed queue). Never blocks: on a full inbox every waiter is woken instead,
        which loses no wake-up."""
        try:
            self._inbox.put_nowait((tag, command, count))
        except asyncio.QueueFull:
            self._overflowed = True

    @asynccontextmanager
    async def waiter(self, tag: str, commands: Sequence[str]) -> AsyncIterator[WaiterHandle]:
        """Registers a waiter for the queues (all of the tenant's when empty)."""
        keys_ = [(tag, c) for c in commands] or [(tag, ALL)]
        waiter = Waiter(keys_)
        for key in keys_:
            self._waiters.setdefault(key, deque()).append(waiter)
        try:
            yield WaiterHandle(self, waiter)
        finally:
            for key in keys_:
                queue = self._waiters.get(key)
                if queue is not None:
                    queue.remove(waiter)
                    if not queue:
                        del self._waiters[key]

    def waiting(self) -> int:
        """How many claim requests are waiting (each counted once)."""
        return len({id(w) for q in self._waiters.values() for w in q})

    # ------------------------------------------------------------ waking

    def wake(self, key: tuple[str, str], count: int, skip: Waiter | None = None) -> int:
        """Wakes up to `count` of a queue's waiters that are not already awake, oldest
        first; returns how many it woke."""
        woken = 0
        for waiter in self._waiters.get(key, ()):
            if woken >= count:
                break
            if waiter is not skip and not waiter.woken:
                waiter.wake()
                woken += 1
        return woken

    def awake_besides(self, key: tuple[str, str], waiter: Waiter) -> bool:
        """Whether a waiter of the queue other than `waiter` is woken or claiming."""
        return any(w is not waiter and (w.woken or w.claiming) for w in self._waiters.get(key, ()))

    def _ready(self, tag: str, command: str, count: int) -> None:
        """Wakes one waiter per ready task: those of the queue first, then those
        waiting on every queue of the tenant for what is left."""
        woken = self.wake((tag, command), count)
        self.wake((tag, ALL), max(count - woken, 1))

    def wake_all(self) -> None:
        """Wakes every waiter (shutdown, missed messages)."""
        for queue in self._waiters.values():
            for waiter in queue:
                waiter.wake()

    # ------------------------------------------------------------ loops

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._drain_inbox())
            group.create_task(self._listen())

    async def _drain_inbox(self) -> None:
        while True:
            self._ready(*await self._inbox.get())
            while not self._inbox.empty():
                self._ready(*self._inbox.get_nowait())
            if self._overflowed:  # the inbox was full, so the get above did not wait
                self._overflowed = False
                self.wake_all()

    async def _listen(self) -> None:
        """Relays other daemons' ready events; after a reconnect, wakes everyone in
        case a message was missed while the connection was down."""
        delay, missed = 0.1, False
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(keys.PUBSUB_READY)
                    raise_if_cancelled()  # the subscribe may have swallowed a stop
                    self.listening.set()
                    if missed:
                        self.wake_all()
                    delay, missed = 0.1, False
                    async for message in pubsub.listen():
                        self._relay(message["data"])
            except (rx.ConnectionError, rx.TimeoutError, OSError) as exc:
                log.warning("ready channel lost; resubscribing", error=str(exc), retry_in=delay)
                missed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _relay(self, data: str) -> None:
        """Handles "<origin>|<tag>|<command>|<edge>" (see lib.lua announce_ready)."""
        origin, _, rest = data.partition("|")
        tag, _, rest = rest.partition("|")
        command, _, edge = rest.partition("|")
        if origin != self._origin:
            self.became_ready(tag, command)
        elif edge == "1" and self.on_queue_nonempty is not None:
            # Each event is announced by the daemon whose script caused it: that
            # daemon alone notifies, so N daemons do not notify N times.
            self.on_queue_nonempty(tag, command)
