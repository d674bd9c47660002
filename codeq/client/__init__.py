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

Failures raise `CodeqError(status, message, body)`.
"""

from codeq.client.api import CodeqError, JsonObject
from codeq.client.http import Client
from codeq.client.producer import Producer
from codeq.client.worker import Abandon, Complete, Fail, Handler, Nack, Outcome, Worker

__all__ = [
    "Abandon",
    "Client",
    "CodeqError",
    "Complete",
    "Fail",
    "Handler",
    "JsonObject",
    "Nack",
    "Outcome",
    "Producer",
    "Worker",
]
