"""The HTTP API over the real composition root, with an in-memory store and a scripted runtime."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from domain.errors import RepositoryUnavailableError, RuntimeUnavailableError
from entrypoint.container import Container
from testkit.container import AUTH, make_container, recorded
from testkit.fakes import FakeRuntime

CHAT = "3f2d6a0e-8c1b-4c2e-9a55-0d7f1b2c3d4e"


def execute(client: TestClient, code: str, chat: str = CHAT, **body: object) -> httpx.Response:
    return client.post(f"/v1/chats/{chat}/executions", json={"code": code, **body}, headers=AUTH)


def test_execute_returns_the_result_and_the_session(client: TestClient) -> None:
    response = execute(client, "print(1)")

    assert response.status_code == 200
    body = response.json()
    assert body["stdout"] == "print(1)"
    assert body["exit_code"] == 0
    assert body["timed_out"] is False
    assert body["sandbox_replaced"] is False
    assert body["session"]["chat_id"] == CHAT
    assert body["session"]["status"] == "running"
    assert body["session"]["last_activity_at"] is not None


def test_the_same_chat_reuses_its_sandbox(client: TestClient) -> None:
    first = execute(client, "a").json()["session"]["session_id"]
    second = execute(client, "b").json()["session"]["session_id"]
    other = execute(client, "c", chat=str(uuid.uuid4())).json()["session"]["session_id"]

    assert first == second
    assert other != first


def test_a_timed_out_execution_is_a_200_with_timed_out(client: TestClient) -> None:
    response = execute(client, "timeout", timeout_s=0.5)

    assert response.status_code == 200
    body = response.json()
    assert body["timed_out"] is True
    assert body["exit_code"] is None
    assert body["state_lost"] is True
    assert body["stdout"] == "partial"


def test_a_sandbox_that_dies_is_replaced_and_the_result_says_so(
    client: TestClient, runtime: FakeRuntime
) -> None:
    before = execute(client, "x").json()["session"]["session_id"]

    body = execute(client, "kill").json()

    assert body["sandbox_replaced"] is True
    assert body["state_lost"] is True
    assert body["session"]["session_id"] != before


@pytest.mark.parametrize(
    ("headers", "expected_message"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer wrong"}, "unknown API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed"),
    ],
)
def test_requests_without_a_valid_key_get_401(
    client: TestClient, runtime: FakeRuntime, headers: dict[str, str], expected_message: str
) -> None:
    response = client.post(f"/v1/chats/{CHAT}/executions", json={"code": "x"}, headers=headers)

    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert expected_message in response.json()["message"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert runtime.executed == []


def test_health_endpoints_and_the_openapi_document_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/chats/{chat_id}/executions" in spec["paths"]
    assert "/v1/sandboxes" in spec["paths"]
    assert client.get("/metrics").status_code == 401


def test_a_malformed_chat_id_is_422_invalid_chat_id(
    client: TestClient, runtime: FakeRuntime
) -> None:
    response = execute(client, "x", chat="not-a-uuid")

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_chat_id"
    assert client.get("/v1/chats/123/sandbox", headers=AUTH).json()["code"] == "invalid_chat_id"
    assert runtime.executed == []


def test_any_uuid_spelling_names_the_same_chat(client: TestClient) -> None:
    canonical = execute(client, "a").json()["session"]
    compact = execute(client, "b", chat=CHAT.replace("-", "").upper()).json()["session"]

    assert compact["session_id"] == canonical["session_id"]


def test_code_over_the_limit_is_413(runtime: FakeRuntime) -> None:
    container = make_container(runtime, max_code_bytes=1000)
    with TestClient(container.http_app()) as client:
        response = execute(client, "é" * 501)  # 1002 UTF-8 bytes
        huge = client.post(
            f"/v1/chats/{CHAT}/executions",
            content=b'{"code": "' + b"x" * 200_000 + b'"}',
            headers={**AUTH, "content-type": "application/json"},
        )

    assert response.status_code == 413
    assert response.json()["code"] == "code_too_large"
    assert huge.status_code == 413
    assert huge.json()["code"] == "code_too_large"
    assert runtime.executed == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"code": "x", "language": "cobol"}, "unsupported_language"),
        ({"code": "x", "timeout_s": 0}, "invalid_timeout"),
        ({"code": "x", "timeout_s": 100000}, "invalid_timeout"),
        ({"language": "python"}, "invalid_request"),
        ({"code": "x", "surprise": 1}, "invalid_request"),
    ],
)
def test_invalid_input_is_422_with_a_stable_code(
    client: TestClient, body: dict[str, object], code: str
) -> None:
    response = client.post(f"/v1/chats/{CHAT}/executions", json=body, headers=AUTH)

    assert response.status_code == 422
    assert response.json()["code"] == code
    assert set(response.json()) == {"code", "message", "request_id"}


def test_every_response_carries_a_request_id(client: TestClient, container: Container) -> None:
    mine = client.get("/healthz", headers={"x-request-id": "abc-123"})
    generated = execute(client, "x")
    forged = client.get("/healthz", headers={"x-request-id": "bad id\nwith newline"})

    assert mine.headers["x-request-id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert forged.headers["x-request-id"] != "bad id\nwith newline"
    lines = recorded(container.access_logger()).named("http_request")
    assert len(lines) == 3
    assert lines[0]["request_id"] == "abc-123"
    assert lines[1]["route"] == "/v1/chats/{chat_id}/executions"
    assert lines[1]["status"] == 200


def test_sandbox_lifecycle_put_get_renew_delete(client: TestClient) -> None:
    url = f"/v1/chats/{CHAT}/sandbox"
    assert client.get(url, headers=AUTH).status_code == 404
    assert client.get(url, headers=AUTH).json()["code"] == "sandbox_not_found"
    assert client.post(f"{url}/renew", headers=AUTH).status_code == 404

    created = client.put(url, headers=AUTH)
    reused = client.put(url, headers=AUTH)
    fetched = client.get(url, headers=AUTH)
    renewed = client.post(f"{url}/renew", headers=AUTH)

    assert created.status_code == 200
    assert reused.json()["session_id"] == created.json()["session_id"]
    assert fetched.json()["session_id"] == created.json()["session_id"]
    assert renewed.status_code == 200
    assert renewed.json()["expires_at"] >= created.json()["expires_at"]

    assert client.delete(url, headers=AUTH).status_code == 204
    assert client.delete(url, headers=AUTH).status_code == 204
    assert client.get(url, headers=AUTH).status_code == 404


def test_list_sandboxes_pages_and_filters(client: TestClient) -> None:
    chats = [str(uuid.uuid4()) for _ in range(3)]
    for chat in chats:
        client.put(f"/v1/chats/{chat}/sandbox", headers=AUTH)

    first = client.get("/v1/sandboxes?limit=2", headers=AUTH).json()
    second = client.get("/v1/sandboxes?limit=2&offset=2", headers=AUTH).json()
    running = client.get("/v1/sandboxes?status=running", headers=AUTH).json()
    dead = client.get("/v1/sandboxes?status=dead", headers=AUTH).json()
    bad = client.get("/v1/sandboxes?status=zombie", headers=AUTH)

    assert len(first["items"]) == 2
    assert first["next_offset"] == 2
    assert len(second["items"]) == 1
    assert second["next_offset"] is None
    listed = {item["chat_id"] for item in first["items"] + second["items"]}
    assert listed == set(chats)
    assert len(running["items"]) == 3
    assert dead["items"] == []
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_input"


def test_too_many_executions_in_flight_is_429(runtime: FakeRuntime) -> None:
    container = make_container(runtime, max_inflight_executions=1)
    with TestClient(container.http_app()) as client:
        first: dict[str, object] = {}
        thread = threading.Thread(target=lambda: first.update(r=execute(client, "block")))
        thread.start()
        try:
            assert runtime.blocked.acquire(timeout=10)
            second = execute(client, "x", chat=str(uuid.uuid4()))
        finally:
            runtime.gate.set()
            thread.join(10)

    assert second.status_code == 429
    assert second.json()["code"] == "too_many_executions"
    assert second.headers["retry-after"] == "1"
    assert first["r"].status_code == 200  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (RuntimeUnavailableError("engine down"), "runtime_unavailable"),
        (RepositoryUnavailableError("db down"), "database_unavailable"),
    ],
)
def test_unavailable_dependencies_are_503(
    client: TestClient, runtime: FakeRuntime, failure: Exception, code: str
) -> None:
    runtime.fail_create = failure

    response = execute(client, "x")

    assert response.status_code == 503
    request_id = response.headers["x-request-id"]
    assert response.json()["code"] == code
    assert response.json()["request_id"] == request_id
    assert str(failure) not in response.json()["message"]
    assert response.headers["retry-after"] == "1"


def test_readyz_is_503_when_the_runtime_does_not_answer(
    client: TestClient, runtime: FakeRuntime
) -> None:
    runtime.fail_list = RuntimeUnavailableError("engine down")

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"] == {
        "database": "ok",
        "runtime": "RuntimeUnavailableError",
    }


def test_streaming_sends_chunks_then_the_result(client: TestClient) -> None:
    with client.stream(
        "POST",
        f"/v1/chats/{CHAT}/executions",
        json={"code": "stream:a,b,c"},
        headers={**AUTH, "Accept": "text/event-stream"},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse("".join(response.iter_text()))

    # Chunks that come together are coalesced into fewer frames, in order.
    assert {name for name, _ in events[:-1]} == {"stdout"}
    assert events[-1][0] == "result"
    assert "".join(data["data"] for _, data in events[:-1]) == "abc"
    assert events[-1][1]["stdout"] == "abc"
    assert events[-1][1]["session"]["chat_id"] == CHAT


def test_streaming_errors_found_before_output_keep_their_status(client: TestClient) -> None:
    response = client.post(
        f"/v1/chats/{CHAT}/executions",
        json={"code": "x", "language": "cobol"},
        headers={**AUTH, "Accept": "text/event-stream"},
    )

    assert response.status_code == 422
    assert response.json()["code"] == "unsupported_language"


def test_metrics_count_executions_and_errors(client: TestClient) -> None:
    execute(client, "ok")
    execute(client, "stderr:boom")
    execute(client, "timeout", timeout_s=1)
    execute(client, "x", chat="nope")

    text = client.get("/metrics", headers=AUTH).text

    assert 'sandboxd_executions_total{outcome="ok",transport="http"} 1.0' in text
    assert 'sandboxd_executions_total{outcome="error",transport="http"} 1.0' in text
    assert 'sandboxd_executions_total{outcome="timed_out",transport="http"} 1.0' in text
    assert 'sandboxd_errors_total{code="invalid_chat_id",transport="http"} 1.0' in text
    assert 'sandboxd_live_sandboxes{status="running"} 1.0' in text
    assert "sandboxd_execution_duration_seconds_bucket" in text


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events
