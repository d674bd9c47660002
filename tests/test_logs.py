"""Logs of a real `codeq serve`: one JSON access line per request carrying the request
id, tenant, command and task id where known -- and never a token or a secret."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import TOKENS, Api, ServeProcess, StoreProcess, free_port

SECRET = "hmac-secret-that-must-not-leak"
BAD_TOKEN = "forged-token-that-must-not-leak-either"


@pytest.fixture
def daemon_process(tmp_path: Path, store_server: StoreProcess) -> Iterator[ServeProcess]:
    config = tmp_path / "codeq.yaml"
    config.write_text(
        yaml.safe_dump({"staticTokens": {token: claims for token, claims in TOKENS.values()}})
    )
    child = ServeProcess(
        ["--config", str(config)],
        {
            "PORT": str(free_port()),
            "REDIS_ADDR": store_server.url,
            "PRODUCER_AUTH_PROVIDER": "static",
            "WORKER_AUTH_PROVIDER": "static",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "debug",
            "WEBHOOK_HMAC_SECRET": SECRET,
        },
        tmp_path / "serve.log",
    )
    yield child
    child.stop()


def access_lines(child: ServeProcess) -> list[dict[str, Any]]:
    return child.events("request")


async def test_access_log_carries_the_request_context(
    daemon_process: ServeProcess, http: aiohttp.ClientSession, store_url: str
) -> None:
    """Each request gets one access line with request id, tenant, command and task id;
    no token or secret appears anywhere in the log."""
    await daemon_process.ready(http)
    api = Api(http, daemon_process.url)
    task = await api.create("LOGGED", payload={"k": "v"})
    claimed = await api.claim(commands=["LOGGED"])
    assert claimed["id"] == task["id"]
    status, _, _ = await api.call(
        "POST",
        "/v1/codeq/tasks",
        None,
        {"command": "X", "payload": {}},
        {"Authorization": f"Bearer {BAD_TOKEN}"},
    )
    assert status == 401
    async with http.get(
        daemon_process.url + f"/v1/codeq/tasks/{task['id']}",
        headers={**api.headers("producer"), "X-Request-Id": "req-from-the-client"},
    ) as resp:
        assert resp.status == 200

    def logged() -> list[dict[str, Any]]:
        return [line for line in access_lines(daemon_process) if line["route"] != "/readyz"]

    lines = logged()
    assert len(lines) == 4, lines
    create, claim, refused, get = lines
    assert (create["route"], create["status"], create["tenant"]) == ("/v1/codeq/tasks", 202, "acme")
    assert create["command"] == "LOGGED" and create["task_id"] == task["id"]
    assert claim["command"] == "LOGGED" and claim["task_id"] == task["id"]
    assert claim["subject"] == "worker-1"
    assert refused["status"] == 401 and "tenant" not in refused
    assert get["request_id"] == "req-from-the-client" and get["task_id"] == task["id"]
    assert len({line["request_id"] for line in lines}) == 4
    for line in lines:
        assert line["level"] == "info" and "duration_ms" in line and "timestamp" in line

    text = daemon_process.log_text()
    for secret in [SECRET, BAD_TOKEN, *(token for token, _ in TOKENS.values())]:
        assert secret not in text, "a secret reached the log"
    for line in text.splitlines():
        json.loads(line)  # JSON lines only, nothing else on stderr
