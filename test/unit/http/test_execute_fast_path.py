"""The execute fast path answers exactly as the FastAPI route does, and declines what it does
not serve (the route then answers)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import MutableMapping
from typing import Any

import pytest
from fastapi.testclient import TestClient

from domain.errors import RuntimeUnavailableError
from domain.tenant import Caller
from entrypoint.container import Container
from entrypoint.http.fast_execute import EXECUTE_PATH, ExecuteFastPath
from entrypoint.http.routes import v1
from testkit.container import AUTH
from testkit.fakes import FakeRuntime

# A JSON content type the fast path leaves to FastAPI, which reads any ``+json`` one as JSON.
FASTAPI_ANSWERS = {"content-type": "application/vnd.sandboxd+json"}


def post(client: TestClient, chat: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(
        f"/v1/chats/{chat}/executions",
        content=content,
        headers={**AUTH, "content-type": "application/json", **headers},
    )
    answer = response.json()
    if response.status_code == 200:
        answer = {key: answer[key] for key in ("stdout", "exit_code", "timed_out")}
    else:
        answer = answer["code"]
    return response.status_code, answer


@pytest.mark.parametrize(
    ("chat", "body"),
    [
        (str(uuid.uuid4()), {"code": "print(1)"}),
        ("not-a-uuid", {"code": "print(1)"}),
        (str(uuid.uuid4()), {"code": "x", "language": "cobol"}),
        (str(uuid.uuid4()), {"code": "x", "timeout_s": 0}),
        (str(uuid.uuid4()), {"code": "x", "surprise": 1}),
        (str(uuid.uuid4()), {"language": "python"}),
        (str(uuid.uuid4()), b"{not json"),
        (str(uuid.uuid4()), {"code": "timeout", "timeout_s": 0.2}),
    ],
)
def test_the_fast_path_answers_as_the_route_does(client: TestClient, chat: str, body: Any) -> None:
    fast = post(client, chat, body, {})
    routed = post(client, chat, body, FASTAPI_ANSWERS)

    assert fast == routed


def test_an_error_of_the_runtime_is_the_error_tables_answer(
    client: TestClient, runtime: FakeRuntime
) -> None:
    runtime.fail_create = RuntimeUnavailableError("engine down at /var/run/docker.sock")

    fast = post(client, str(uuid.uuid4()), {"code": "x"}, {})
    routed = post(client, str(uuid.uuid4()), {"code": "x"}, FASTAPI_ANSWERS)

    assert fast == routed == (503, "runtime_unavailable")


def test_the_fast_path_serves_an_execute_without_the_app_behind_it(container: Container) -> None:
    reached: list[str] = []

    async def behind(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    fast = ExecuteFastPath(
        behind,
        api=container.api(),
        route=next(r for r in v1.routes if getattr(r, "path", None) == EXECUTE_PATH),
        metrics=container.metrics(),
        logger=container.logger(),
    )

    async def call(path: str, headers: list[tuple[bytes, bytes]]) -> list[MutableMapping[str, Any]]:
        body = json.dumps({"code": "print(1)"}).encode()
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(b"content-type", b"application/json"), *headers],
            "state": {"caller": Caller("tenant-a"), "request_id": "r1"},
        }
        await fast(scope, receive, send)
        return sent

    async def scenario() -> tuple[list[MutableMapping[str, Any]], ...]:
        served = await call(f"/v1/chats/{uuid.uuid4()}/executions", [])
        streamed = await call(
            f"/v1/chats/{uuid.uuid4()}/executions", [(b"accept", b"text/event-stream")]
        )
        other = await call(f"/v1/chats/{uuid.uuid4()}/sandbox", [])
        return served, streamed, other

    try:
        served, streamed, other = asyncio.run(scenario())
    finally:
        container.api().close()

    assert served[0]["status"] == 200
    assert json.loads(served[1]["body"])["stdout"] == "print(1)"
    assert streamed == other == []
    assert len(reached) == 2
