"""The watchdog pinger: WATCHDOG=1 to systemd every half watchdog interval, from the
event loop, so a stuck loop stops the pings and systemd restarts the daemon."""

from __future__ import annotations

import asyncio
import time

from codeq import systemd
from codeq.actors.base import Actor


class WatchdogPinger(Actor):
    """Pings the service manager's watchdog once the daemon is ready, until stopped."""

    name = "watchdog"

    def __init__(self, interval: float, ready: asyncio.Event) -> None:
        super().__init__()
        self.interval = interval
        self.ready = ready  # set once READY=1 was sent: systemd watches from then on

    async def run(self) -> None:
        await self.ready.wait()
        next_ping = time.time() * 1000
        while True:
            systemd.notify("WATCHDOG=1")
            # The next deadline follows the schedule, not the end of this pass; a loop
            # that fell behind (it was stuck) pings at once and starts a new schedule.
            next_ping = max(next_ping + self.interval * 1000, time.time() * 1000)
            await self.sleep_until(next_ping)
