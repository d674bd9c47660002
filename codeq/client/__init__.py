"""The Python client of codeq's v1 API.

`Client` is the HTTP transport (one method per endpoint); `Producer` and `Worker`
are the stable API on top of it::

    from codeq.client import Client, Producer, Worker

    async with Client("http://127.0.0.1:8080", token) as client:
        task = await Producer(client).create("RENDER", {"jobId": "j-1"})

        async def render(task):            # returns the result object
            return {"ok": True}

        worker = Worker(client, ["RENDER"], render, concurrency=4)
        await worker.run()                 # until worker.stop()

Over WebSocket streams (SPEC §5), `WorkerStream` and `ProducerStream` go where the
`Client` goes, with the same `Producer` and `Worker` API (see codeq/client/stream.py)::

    async with WorkerStream("ws://127.0.0.1:8081", token) as stream:
        await Worker(stream, ["RENDER"], render, concurrency=4).run()

Failures raise `CodeqError(status, message, body)`.
"""

from typing import TYPE_CHECKING, Any

from codeq.client.api import CodeqError, JsonObject
from codeq.client.http import Client
from codeq.client.producer import Producer
from codeq.client.worker import Abandon, Complete, Fail, Handler, Leave, Nack, Outcome, Worker

if TYPE_CHECKING:
    from codeq.client.stream import ProducerStream, StreamClosed, WorkerStream

_STREAM_NAMES = frozenset({"ProducerStream", "StreamClosed", "WorkerStream"})


def __getattr__(name: str) -> Any:
    """The WebSocket stream client on first use: it imports aiohttp, which a
    one-shot CLI command over plain connections does without."""
    if name in _STREAM_NAMES:
        from codeq.client import stream

        return getattr(stream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Abandon",
    "Client",
    "CodeqError",
    "Complete",
    "Fail",
    "Handler",
    "JsonObject",
    "Leave",
    "Nack",
    "Outcome",
    "Producer",
    "ProducerStream",
    "StreamClosed",
    "Worker",
    "WorkerStream",
]
