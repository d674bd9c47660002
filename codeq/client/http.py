"""The HTTP transport of the client: one method per endpoint of codeq's v1 API.

All wire details (paths, headers, status codes, JSON) live in this class, so
`Producer` and `Worker` can run over another transport with the same methods.
How the bytes travel (a pooled aiohttp session or plain connections, TCP or a
Unix socket) is `codeq.client.connections`'s business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import orjson

from codeq.client.api import TERMINAL_STATUSES, CodeqError, JsonObject
from codeq.client.connections import (
    API_PREFIX,
    DirectLink,
    GaveUp,
    Link,
    PooledLink,
    Target,
    Unreachable,
)

PREFIX = API_PREFIX
USER_AGENT = "codeq-client/0.1"
# A result poll (`result(wait_seconds=…)`) starts fast and slows down to this.
MAX_SERVER_WAIT_SECONDS = 30.0  # the API's longest waitSeconds
# Bulk creates on a 429: the longest single pause, and how long in all one item waits.
MAX_RETRY_AFTER_SECONDS = 60.0
RATE_LIMIT_PATIENCE_SECONDS = 300.0

log = logging.getLogger("codeq.client")


def _drop_none(body: Mapping[str, Any]) -> JsonObject:
    return {k: v for k, v in body.items() if v is not None}


class Client:
    """An async client of one codeq daemon; use it as an async context manager.

    base_url: the daemon's address, http://127.0.0.1:8080, https://… or
    unix:///path/to/codeq.sock (its unixSocketPath); a /v1/codeq at the end is
    dropped. token: the bearer token (None sends no Authorization header);
    timeout: seconds per request, on top of any long-poll wait the request asks
    for. pooled: keep connections open in an aiohttp pool (workers, bulk creates,
    most programs); False opens one plain connection per request and never
    imports aiohttp, which starts a one-shot command about 0.2 s sooner.

    Every method returns the decoded JSON answer and raises `CodeqError` for a
    non-2xx status or a request that could not be made. A bad base_url is a
    ValueError.
    """

    def __init__(
        self, base_url: str, token: str | None, *, timeout: float = 30.0, pooled: bool = True
    ) -> None:
        self.target = Target.parse(base_url)
        self.base_url = self.target.url
        self._token = token
        self.timeout = timeout
        self.pooled = pooled
        self._link: Link | None = None

    def __repr__(self) -> str:  # never shows the token
        return f"Client({self.base_url!r})"

    async def __aenter__(self) -> Client:
        headers = {"User-Agent": USER_AGENT}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        link = PooledLink if self.pooled else DirectLink
        self._link = link(self.target, headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._link is not None:
            await self._link.close()
            self._link = None

    # ------------------------------------------------------------ the wire

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, Any] | None = None,
        lease_token: str | None = None,
        extra_seconds: float = 0.0,
        give_up: asyncio.Event | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON or None) of one call under /v1/codeq; raises
        CodeqError unless the status is 2xx. give_up: an event that, set before
        the answer begins, drops the request and raises GaveUp."""
        if self._link is None:
            raise RuntimeError("Client is not open: use `async with Client(...)`")
        headers = {"X-Lease-Token": lease_token} if lease_token else {}
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        data = orjson.dumps(dict(body)) if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            reply = await self._link.send(
                method,
                PREFIX + path,
                query=params,
                headers=headers,
                data=data,
                timeout=self.timeout + extra_seconds,
                give_up=give_up,
            )
        except Unreachable as exc:
            hint = "; is `codeq serve` running there?" if exc.not_listening else ""
            raise CodeqError(0, f"cannot reach {self.base_url}: {exc}{hint}") from exc
        warning = reply.headers.get("x-codeq-warning")
        if warning:
            log.warning("codeq: %s", warning)
        try:
            decoded = orjson.loads(reply.body) if reply.body.strip() else None
        except orjson.JSONDecodeError:
            decoded = reply.body.decode(errors="replace")
        if not 200 <= reply.status < 300:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            text = str(message or decoded or "(no body)")
            if reply.status == 404 and text in ("Not Found", "404: Not Found"):
                text += (
                    f" (no such endpoint: is {self.base_url} the daemon's address, "
                    "e.g. http://127.0.0.1:8080?)"
                )
            raise CodeqError(reply.status, text, decoded)
        return reply.status, decoded

    async def _json(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return (await self.request(method, path, body, **kw))[1]

    # ------------------------------------------------------------ producer

    async def create(
        self,
        command: str,
        payload: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
        delay_seconds: float | None = None,
        run_at: str | None = None,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        max_attempts: int | None = None,
    ) -> JsonObject:
        """Creates a task → the task (202). run_at is RFC 3339."""
        body = {
            "command": command,
            "payload": dict(payload) if payload is not None else None,
            "priority": priority,
            "delaySeconds": delay_seconds,
            "runAt": run_at,
            "idempotencyKey": idempotency_key,
            "webhook": webhook,
            "maxAttempts": max_attempts,
        }
        return await self.create_from(body)

    async def create_from(self, body: Mapping[str, Any]) -> JsonObject:
        """Creates a task from a ready-made create body (camelCase fields)."""
        task: JsonObject = await self._json("POST", "/tasks", _drop_none(body))
        return task

    async def create_many(
        self,
        bodies: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = 16,
        on_result: Callable[[int, JsonObject | CodeqError], None] | None = None,
        on_pause: Callable[[float], None] | None = None,
        patience: float = RATE_LIMIT_PATIENCE_SECONDS,
    ) -> list[JsonObject | CodeqError]:
        """Creates each body, at most `concurrency` requests at once. Returns, in
        input order, the created task or the CodeqError that refused it: one bad
        item does not stop the others. on_result(index, outcome) is called as each
        one finishes (e.g. to advance a progress bar).

        A 429 (rate limited) pauses every lane for the Retry-After the daemon
        names (at most 60 s at a time; on_pause(seconds) is told when a pause
        begins), then the item is sent again; an item refused so for `patience`
        seconds in all keeps its 429."""
        items = list(bodies)
        out: list[JsonObject | CodeqError] = [CodeqError(0, "not sent")] * len(items)
        next_index = iter(range(len(items)))
        loop = asyncio.get_running_loop()
        resume_at = 0.0  # loop time before which no lane sends (a 429's Retry-After)

        async def create(body: Mapping[str, Any]) -> JsonObject | CodeqError:
            nonlocal resume_at
            waited = 0.0
            while True:
                if resume_at > loop.time():
                    await asyncio.sleep(resume_at - loop.time())
                try:
                    return await self.create_from(body)
                except CodeqError as exc:
                    if exc.status != 429 or waited >= patience:
                        return exc
                    now = loop.time()
                    pause = min(exc.retry_after or 1.0, MAX_RETRY_AFTER_SECONDS)
                    if resume_at <= now and on_pause is not None:
                        on_pause(pause)  # a new pause, not one more lane joining it
                    resume_at = max(resume_at, now + pause)
                    waited += resume_at - now

        async def lane() -> None:
            for i in next_index:
                outcome = await create(items[i])
                out[i] = outcome
                if on_result is not None:
                    on_result(i, outcome)

        async with asyncio.TaskGroup() as lanes:
            for _ in range(max(1, min(concurrency, len(items)))):
                lanes.create_task(lane())
        return out

    async def get(self, task_id: str) -> JsonObject:
        """The task."""
        task: JsonObject = await self._json("GET", f"/tasks/{_seg(task_id)}")
        return task

    async def result(self, task_id: str, *, wait_seconds: float | None = None) -> JsonObject:
        """`{"task": …, "result": … or None}`. With wait_seconds, long-polls until the
        task has ended or the time is up (the server waits at most 30 s a request, so
        longer waits take several), and returns the last answer."""
        path = f"/tasks/{_seg(task_id)}/result"
        deadline = time.monotonic() + (wait_seconds or 0)
        while True:
            left = deadline - time.monotonic()
            wait = min(max(left, 0.0), MAX_SERVER_WAIT_SECONDS)
            query = {"waitSeconds": f"{wait:.3f}"} if wait > 0 else None
            try:
                answer: JsonObject = await self._json("GET", path, query=query, extra_seconds=wait)
            except CodeqError as exc:  # 404 "result not found": not ended yet (codeQ's way)
                if exc.status != 404 or not isinstance(exc.body, dict) or "task" not in exc.body:
                    raise
                answer = {"task": exc.body["task"], "result": None}
            if answer["task"].get("status") in TERMINAL_STATUSES or left <= wait:
                return answer

    async def history(self, task_id: str) -> JsonObject:
        """`{"taskId", "history": […]}`: the task's timeline."""
        answer: JsonObject = await self._json("GET", f"/tasks/{_seg(task_id)}/history")
        return answer

    async def cancel(self, task_id: str, reason: str | None = None) -> JsonObject:
        """The CANCELLED task (pending), or `{"status":"cancel_requested","task"}`
        (in progress: its worker is told on its next heartbeat)."""
        body = _drop_none({"reason": reason})
        answer: JsonObject = await self._json("POST", f"/tasks/{_seg(task_id)}/cancel", body)
        return answer

    # ------------------------------------------------------------ worker

    async def claim(
        self,
        commands: Sequence[str] = (),
        *,
        lease_seconds: int | None = None,
        wait_seconds: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> JsonObject | None:
        """The claimed task (with its `leaseToken`), or None when nothing came
        within wait_seconds (a long poll, at most 30 s). stop: set before the
        answer begins, it drops the long poll at once (None); an answer already
        begun is read, so a task leased by then is returned, never lost."""
        body = _drop_none(
            {
                "commands": list(commands) or None,
                "leaseSeconds": lease_seconds,
                "waitSeconds": wait_seconds,
            }
        )
        try:
            status, task = await self.request(
                "POST", "/tasks/claim", body, extra_seconds=wait_seconds or 0.0, give_up=stop
            )
        except GaveUp:
            return None
        return task if status == 200 else None

    async def heartbeat(
        self, task_id: str, lease_token: str | None, *, extend_seconds: int | None = None
    ) -> JsonObject:
        """Extends the lease → `{"ok": true, "leaseUntil"}`."""
        body = _drop_none({"extendSeconds": extend_seconds})
        answer: JsonObject = await self._json(
            "POST", f"/tasks/{_seg(task_id)}/heartbeat", body, lease_token=lease_token
        )
        return answer

    async def nack(
        self,
        task_id: str,
        lease_token: str | None,
        *,
        reason: str | None = None,
        delay_seconds: int | None = None,
    ) -> JsonObject:
        """Gives the task back for a retry after a backoff (or dead-letters it)."""
        body = _drop_none({"reason": reason, "delaySeconds": delay_seconds})
        answer: JsonObject = await self._json(
            "POST", f"/tasks/{_seg(task_id)}/nack", body, lease_token=lease_token
        )
        return answer

    async def abandon(self, task_id: str, lease_token: str | None) -> JsonObject:
        """Gives the task back at once, next in line → `{"status":"requeued"}`."""
        answer: JsonObject = await self._json(
            "POST", f"/tasks/{_seg(task_id)}/abandon", {}, lease_token=lease_token
        )
        return answer

    async def submit_result(
        self,
        task_id: str,
        lease_token: str | None,
        *,
        status: str,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
        artifacts: Sequence[Mapping[str, str]] | None = None,
    ) -> JsonObject:
        """Ends the task COMPLETED (with result) or FAILED (with error)."""
        body = _drop_none(
            {
                "status": status,
                "result": dict(result) if result is not None else None,
                "error": error,
                "artifacts": [dict(a) for a in artifacts] if artifacts else None,
            }
        )
        answer: JsonObject = await self._json(
            "POST", f"/tasks/{_seg(task_id)}/result", body, lease_token=lease_token
        )
        return answer

    # ------------------------------------------------------------ admin

    async def queues(self) -> list[JsonObject]:
        """QueueStats of every command of the tenant."""
        stats: list[JsonObject] = await self._json("GET", "/admin/queues")
        return stats

    async def queue(self, command: str) -> JsonObject:
        """QueueStats of one command (zeros for one never seen)."""
        stats: JsonObject = await self._json("GET", f"/admin/queues/{_seg(command)}")
        return stats

    async def pause(self, command: str) -> JsonObject:
        answer: JsonObject = await self._json("POST", f"/admin/queues/{_seg(command)}/pause")
        return answer

    async def resume(self, command: str) -> JsonObject:
        answer: JsonObject = await self._json("POST", f"/admin/queues/{_seg(command)}/resume")
        return answer

    async def purge(self, command: str) -> JsonObject:
        """Deletes the command's ready and delayed tasks → `{"purged": N}`."""
        answer: JsonObject = await self._json("POST", f"/admin/queues/{_seg(command)}/purge")
        return answer

    async def dlq(
        self,
        command: str,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        error: str | None = None,
        older_than_seconds: int | None = None,
        newer_than_seconds: int | None = None,
    ) -> JsonObject:
        """One page of the dead-letter queue → `{"tasks": […], "nextCursor"}`."""
        query = {
            "cursor": cursor,
            "limit": limit,
            "error": error,
            "olderThanSeconds": older_than_seconds,
            "newerThanSeconds": newer_than_seconds,
        }
        page: JsonObject = await self._json(
            "GET", f"/admin/queues/{_seg(command)}/dlq", query=query
        )
        return page

    async def redrive(
        self,
        command: str,
        *,
        ids: Sequence[str] | None = None,
        error: str | None = None,
        all: bool = False,
        limit: int | None = None,
        rate_per_second: float | None = None,
        dry_run: bool = False,
    ) -> JsonObject:
        """Moves dead-lettered tasks back to ready (one of ids / error / all) →
        `{"redriven", "ids", "skipped", "dryRun"}`. A paced redrive lasts as long
        as its pace says, so the request's timeout grows with it."""
        body = _drop_none(
            {
                "ids": list(ids) if ids else None,
                "error": error,
                "all": True if all else None,
                "limit": limit,
                "ratePerSecond": rate_per_second,
                "dryRun": True if dry_run else None,
            }
        )
        moves = len(ids) if ids else (limit or 100)
        pacing = moves / rate_per_second if rate_per_second and not dry_run else 0.0
        answer: JsonObject = await self._json(
            "POST", f"/admin/queues/{_seg(command)}/dlq/redrive", body, extra_seconds=pacing
        )
        return answer

    async def tasks(
        self, command: str, status: str, *, cursor: str | None = None, limit: int | None = None
    ) -> JsonObject:
        """One page of the command's tasks in one state (ready, delayed, in_progress,
        dlq, completed, failed, cancelled) → `{"command", "status", "tasks": […],
        "nextCursor"}`."""
        query = {"status": status, "cursor": cursor, "limit": limit}
        page: JsonObject = await self._json(
            "GET", f"/admin/queues/{_seg(command)}/tasks", query=query
        )
        return page

    async def requeue(self, task_id: str, reason: str | None = None) -> JsonObject:
        """Ends an in-progress task's lease: back in line now → `{"status", "task"}`."""
        body = _drop_none({"reason": reason})
        answer: JsonObject = await self._json("POST", f"/admin/tasks/{_seg(task_id)}/requeue", body)
        return answer

    async def fail(self, task_id: str, reason: str | None = None) -> JsonObject:
        """Ends an in-progress task's lease: FAILED now → `{"status": "failed", "task"}`."""
        body = _drop_none({"reason": reason})
        answer: JsonObject = await self._json("POST", f"/admin/tasks/{_seg(task_id)}/fail", body)
        return answer

    async def cleanup(self, *, limit: int | None = None, before: str | None = None) -> JsonObject:
        """Deletes terminal tasks that ended before `before` (RFC 3339)."""
        body = _drop_none({"limit": limit, "before": before})
        answer: JsonObject = await self._json("POST", "/admin/tasks/cleanup", body)
        return answer


def _seg(value: str) -> str:
    """A path segment, escaped so an odd ID cannot reach another route."""
    return quote(value, safe="")
