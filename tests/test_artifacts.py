"""Inline artifacts (SPEC §10, issue 12): a result's {name, contentBase64, contentType}
is stored by the daemon, answered as {name, url}, served back by GET on that URL with
the caller's auth and tenant, size-capped, and removed with its task."""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Api, RunningDaemon, wait_for
from redis.asyncio import Redis

from codeq.store import keys

TASKS = "/v1/codeq/tasks"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(2048)


@pytest.fixture
async def api(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> Api:
    daemon = await start_daemon(
        local_artifacts_dir=str(tmp_path / "artifacts"), artifact_max_bytes=64 * 1024
    )
    return Api(http, daemon.url)


def inline(name: str, content: bytes, content_type: str = "image/png") -> dict[str, str]:
    encoded = base64.b64encode(content).decode()
    return {"name": name, "contentBase64": encoded, "contentType": content_type}


async def claimed_task(api: Api, command: str = "ART") -> dict[str, Any]:
    task = await api.create(command)
    claimed = await api.claim(commands=[command])
    assert claimed["id"] == task["id"]
    return dict(claimed)


async def fetch(api: Api, url: str, who: str = "producer") -> tuple[int, bytes, Any]:
    async with api.http.get(api.base + url, headers=api.headers(who)) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_inline_artifact_is_stored_and_served_back(api: Api) -> None:
    """The result answers {name, url}; GET on the url returns the bytes with their
    type as an attachment, to the producer and the worker of the tenant."""
    task = await claimed_task(api)
    status, result = await api.result(
        task["id"],
        artifacts=[inline("frame.png", PNG), {"name": "log", "url": "https://x.example/log"}],
    )
    assert status == 200, result
    url = f"{TASKS}/{task['id']}/artifacts/frame.png"
    assert result["artifacts"] == [
        {"name": "frame.png", "url": url},
        {"name": "log", "url": "https://x.example/log"},
    ]
    for who in ("producer", "worker"):
        status, body, headers = await fetch(api, url, who)
        assert (status, body) == (200, PNG)
        assert headers["Content-Type"] == "image/png"
        assert headers["Content-Disposition"] == 'attachment; filename="frame.png"'
        assert headers["X-Content-Type-Options"] == "nosniff"
    _, stored, _ = await api.call("GET", f"{TASKS}/{task['id']}/result", "producer")
    assert stored["result"]["artifacts"][0]["url"] == url


async def test_artifacts_are_private_to_the_tenant(api: Api) -> None:
    """Another tenant, a missing token and an unknown name all get no content."""
    task = await claimed_task(api)
    assert (await api.result(task["id"], artifacts=[inline("a.txt", b"secret", "text/plain")]))[
        0
    ] == 200
    url = f"{TASKS}/{task['id']}/artifacts/a.txt"
    assert (await fetch(api, url, "producer_globex"))[0] == 404
    async with api.http.get(api.base + url) as resp:
        assert resp.status == 401
    assert (await fetch(api, f"{TASKS}/{task['id']}/artifacts/b.txt"))[0] == 404
    assert (await fetch(api, f"{TASKS}/{task['id']}/artifacts/..%2Fx"))[0] in (400, 404)


@pytest.mark.parametrize(
    ("artifact", "status", "named"),
    [
        ({"name": "big.bin", "contentBase64": base64.b64encode(b"x" * 70_000).decode()}, 413,
         "artifactMaxBytes"),
        ({"name": "x.bin", "contentBase64": "not base64!"}, 400, "not base64"),
        ({"name": "../etc/passwd", "contentBase64": "eA=="}, 400, "name"),
        ({"name": "ok.bin", "contentBase64": "eA==", "contentType": "text/html\r\nX: y"}, 400,
         "contentType"),
        ({"name": "ok.bin", "contentBase64": 42}, 400, "not base64"),
    ],
)  # fmt: skip
async def test_bad_inline_artifacts_are_refused_and_change_nothing(
    api: Api, redis: Redis, tmp_path: Path, artifact: dict[str, Any], status: int, named: str
) -> None:
    """Too large, not base64, an unsafe name or content type: a 4xx naming the
    problem; the task stays IN_PROGRESS and no file is written."""
    task = await claimed_task(api)
    code, body = await api.result(task["id"], artifacts=[artifact])
    assert code == status and named in body["error"], body
    assert (await api.get(task["id"]))[1]["status"] == "IN_PROGRESS"
    assert not await redis.exists(keys.result(keys.tenant_tag("acme"), task["id"]))
    files = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert files == []


async def test_a_refused_result_leaves_no_files(api: Api, tmp_path: Path) -> None:
    """A second result (409) or another worker's (403) stores nothing."""
    task = await claimed_task(api)
    assert (await api.result(task["id"]))[0] == 200
    code, _ = await api.result(task["id"], artifacts=[inline("late.png", PNG)])
    assert code == 409
    other = await claimed_task(api, "ART2")
    code, _ = await api.result(other["id"], who="worker2", artifacts=[inline("z.png", PNG)])
    assert code == 403
    assert [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()] == []


async def test_batch_results_refuse_inline_artifacts(api: Api) -> None:
    """POST /tasks/batch/results answers that item with a 400-style error, and the
    other items are recorded."""
    one, two = await claimed_task(api), await claimed_task(api)
    body = {
        "results": [
            {
                "taskId": one["id"],
                "status": "COMPLETED",
                "result": {},
                "artifacts": [inline("a", PNG)],
            },
            {"taskId": two["id"], "status": "COMPLETED", "result": {}},
        ]
    }
    status, answer, _ = await api.call("POST", f"{TASKS}/batch/results", "worker", body)
    assert status == 200, answer
    first, second = answer["results"]
    assert "POST /tasks/{id}/result" in first["error"]
    assert second["result"]["status"] == "COMPLETED"


async def test_artifacts_go_with_their_task(
    start_daemon: Callable[..., Awaitable[RunningDaemon]],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """When retention deletes a task, the janitor's pass removes its artifacts."""
    folder = tmp_path / "artifacts"
    daemon = await start_daemon(
        local_artifacts_dir=str(folder), retention_seconds=1, janitor_interval_seconds=0.2
    )
    api = Api(http, daemon.url)
    task = await claimed_task(api)
    assert (await api.result(task["id"], artifacts=[inline("gone.png", PNG)]))[0] == 200
    stored = folder / keys.tenant_tag("acme") / task["id"] / "gone.png"
    assert stored.read_bytes() == PNG

    async def removed() -> bool:
        return (await api.get(task["id"]))[0] == 404 and not stored.parent.exists()

    await wait_for(removed, timeout=15, interval=0.1, message="task and artifacts removed")
