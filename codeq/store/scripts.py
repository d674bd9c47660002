"""Loads the Lua scripts once and calls them by name (EVALSHA, reloaded on NOSCRIPT)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_LIB = "lib.lua"
NAMES = (
    "create",
    "claim",
    "heartbeat",
    "nack",
    "abandon",
    "result",
    "reap",
    "move_due",
    "cancel",
    "stats",
    "cleanup",
    "pause",
    "resume",
    "purge",
    "dlq_page",
    "redrive",
    "create_batch",
    "result_batch",
    "subscribe",
    "sub_renew",
    "unsubscribe",
    "sub_expire",
    "sub_counts",
    "notify_pick",
    "outbox_claim",
    "outbox_settle",
    "outbox_prune",
    "task_page",
    "admin_requeue",
    "admin_fail",
    "schedule_put",
    "schedule_fire",
    "schedule_pause",
    "schedule_delete",
    "schedule_due",
    "queue_settings",
)
# Scripts that do not work on a tenant: lib.lua (which reads KEYS[1] as a tenant
# prefix) is not prepended, and KEYS[1] is whatever single key the script names.
STANDALONE = ("ratelimit",)


def source(name: str) -> str:
    """The full text of a script: the shared library followed by the script itself
    (the script alone when it is STANDALONE)."""
    folder = resources.files("codeq.store") / "scripts"
    text = (folder / f"{name}.lua").read_text()
    if name in STANDALONE:
        return text
    return (folder / _LIB).read_text() + "\n" + text


class Scripts:
    """The registered scripts of one store connection, callable by name.

    redis-py's registered scripts run with EVALSHA and, on NOSCRIPT (a restarted
    or flushed store), load themselves again and retry.
    """

    def __init__(self, redis: Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source(name)) for name in (*NAMES, *STANDALONE)
        }

    async def load(self, redis: Redis) -> None:
        """Loads every script up front so the first request pays no SCRIPT LOAD."""
        for name, script in self._scripts.items():
            sha = await redis.script_load(script.script)
            assert sha == script.sha, name

    async def __call__(self, name: str, prefix: str, *args: Any) -> Any:
        """Runs a script with `prefix` as KEYS[1]: the tenant prefix, or a STANDALONE
        script's own key."""
        return await self._scripts[name](keys=[prefix], args=args)
