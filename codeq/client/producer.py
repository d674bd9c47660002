"""The producer side: create tasks and follow them to their result."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from codeq.client.api import CodeqError, JsonObject


class ProducerTransport(Protocol):
    """What a Producer needs from a transport (`Client` is the HTTP one)."""

    async def create_from(self, body: Mapping[str, Any]) -> JsonObject: ...

    async def create_many(
        self,
        bodies: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = ...,
        on_result: Callable[[int, JsonObject | CodeqError], None] | None = ...,
    ) -> list[JsonObject | CodeqError]: ...

    async def get(self, task_id: str) -> JsonObject: ...

    async def result(self, task_id: str, *, wait_seconds: float | None = ...) -> JsonObject: ...

    async def cancel(self, task_id: str, reason: str | None = ...) -> JsonObject: ...


class Producer:
    """Creates tasks and reads them back.

    ```python
    async with Client(url, token) as client:
        producer = Producer(client)
        task = await producer.create("RENDER", {"jobId": "j-1"}, priority=5)
        done = await producer.result(task["id"], wait=60)
    ```
    """

    def __init__(self, transport: ProducerTransport) -> None:
        self.transport = transport

    async def create(
        self, command: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> JsonObject:
        """Creates one task. options are create fields in codeQ's camelCase or in
        snake_case (priority, delay_seconds, run_at, idempotency_key, webhook,
        max_attempts)."""
        body = {"command": command, "payload": dict(payload or {})}
        body.update((_camel(k), v) for k, v in options.items())
        return await self.transport.create_from(body)

    async def create_many(
        self,
        bodies: Iterable[Mapping[str, Any]],
        *,
        concurrency: int = 16,
        on_result: Callable[[int, JsonObject | CodeqError], None] | None = None,
    ) -> list[JsonObject | CodeqError]:
        """Creates many tasks (create bodies); see `Client.create_many`."""
        return await self.transport.create_many(
            bodies, concurrency=concurrency, on_result=on_result
        )

    async def get(self, task_id: str) -> JsonObject:
        return await self.transport.get(task_id)

    async def result(self, task_id: str, *, wait: float | None = None) -> JsonObject:
        """`{"task", "result"}`; with wait (seconds), waits for the task to end."""
        return await self.transport.result(task_id, wait_seconds=wait)

    async def cancel(self, task_id: str, reason: str | None = None) -> JsonObject:
        return await self.transport.cancel(task_id, reason)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
