"""Attacks on the HTTP API (issue 11, items 5-8), each written to fail before its fix: cheap
unauthenticated load, bodies over the limit without Content-Length, readiness starved by
executions, host details in error bodies, unbounded streaming buffers, exit codes past int32."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from domain.errors import RepositoryUnavailableError, RuntimeUnavailableError
from entrypoint.container import Container
from entrypoint.http.middleware import is_protected
from testkit.container import AUTH, make_container, recorded
from testkit.fakes import FakeRuntime
from testkit.live import LiveService, live_service

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
SECRET_PATH = "/var/lib/sandboxd-secret/run/agent.sock"
SECRET_LOGIN = "admin@db-7.internal.example"
_WAIT_S = 30.0


@pytest.fixture
def live(runtime: FakeRuntime) -> Iterator[LiveService]:
    with live_service(make_container(runtime, max_code_bytes=1024)) as live:
        yield live


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _chunked_post_head(path: str, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: sandboxd\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n{headers}\r\n"
    ).encode()


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def test_an_unauthenticated_chunked_upload_is_refused_before_its_body_is_read(
    live: LiveService,
) -> None:
    path = f"/v1/chats/{uuid.uuid4()}/executions"
    with socket.create_connection(("127.0.0.1", live.service.http_port), timeout=10) as sock:
        sock.sendall(_chunked_post_head(path))
        sock.sendall(_chunk(b'{"code": "' + b" " * 65536))

        # The body is far from complete: only a service that does not wait for it answers now.
        response = sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 401"), response[:200]

        # And it stops listening: the rest of a 100 MB upload cannot be delivered.
        sent = 0
        with pytest.raises(OSError):
            while sent < 100 * 1024 * 1024:
                sock.sendall(_chunk(b" " * 65536))
                sent += 65536
            sock.recv(1)
            raise ConnectionResetError("the whole body went through")


def test_the_middleware_checks_a_key_on_every_route_that_needs_one(container: Container) -> None:
    # The OpenAPI document lists a security requirement exactly where a router asks for a key.
    paths = container.http_app().openapi()["paths"]
    protected = set()
    for path, operations in paths.items():
        for operation in operations.values():
            assert ("security" in operation) == is_protected(path), path
            if is_protected(path):
                protected.add(path)

    assert {"/metrics", "/v1/chats/{chat_id}/executions"} <= protected


def test_a_chunked_body_over_the_limit_is_413_without_reading_it_all(live: LiveService) -> None:
    path = f"/v1/chats/{uuid.uuid4()}/executions"
    with socket.create_connection(("127.0.0.1", live.service.http_port), timeout=10) as sock:
        sock.sendall(_chunked_post_head(path, f"Authorization: {AUTH['Authorization']}\r\n"))
        # No Content-Length to trust: the limit must count what arrives.
        sock.sendall(_chunk(b'{"code": "' + b" " * 200_000))

        response = _read_until_closed(sock)

    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"code_too_large"' in response


def test_readyz_answers_while_executions_hold_every_worker_thread(
    runtime: FakeRuntime,
) -> None:
    runtime.create_gate = threading.Event()
    container = make_container(runtime, max_inflight_executions=2)
    pinned = 2 + 10  # the executions plus more than the pool's spare threads
    try:
        with live_service(container) as live, ThreadPoolExecutor(pinned) as pool:
            url = live.http_url
            for _ in range(2):
                pool.submit(
                    httpx.post,
                    f"{url}/v1/chats/{uuid.uuid4()}/executions",
                    json={"code": "hi"},
                    headers=AUTH,
                    timeout=60,
                )
            for _ in range(pinned - 2):
                pool.submit(
                    httpx.put, f"{url}/v1/chats/{uuid.uuid4()}/sandbox", headers=AUTH, timeout=60
                )
            for _ in range(container.settings().limits.max_inflight_executions + 8):
                assert runtime.blocked.acquire(timeout=_WAIT_S)

            ready = httpx.get(f"{url}/readyz", timeout=_WAIT_S)

            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok", "runtime": "ok"}
            runtime.create_gate.set()
    finally:
        runtime.create_gate.set()


def test_a_flood_of_readyz_probes_the_dependencies_once_per_cache_window(
    runtime: FakeRuntime,
) -> None:
    container = make_container(runtime, readiness_cache_seconds=3600)
    with TestClient(container.http_app()) as client:
        first = client.get("/readyz")
        probes = runtime.list_calls
        answers = [client.get("/readyz").status_code for _ in range(50)]
    container.api().close()

    assert first.status_code == 200 and set(answers) == {200}
    assert runtime.list_calls == probes == 1


@pytest.mark.parametrize(
    "error",
    [
        RuntimeUnavailableError(f"cannot connect to {SECRET_PATH} for {SECRET_LOGIN}"),
        RepositoryUnavailableError(f'connection to {SECRET_LOGIN} failed: "{SECRET_PATH}"'),
    ],
)
def test_error_bodies_carry_no_host_details_but_the_log_does(
    runtime: FakeRuntime,
    container: Container,
    client: TestClient,
    error: Exception,
) -> None:
    runtime.fail_create = error

    response = client.post(
        f"/v1/chats/{uuid.uuid4()}/executions", json={"code": "hi"}, headers=AUTH
    )

    assert response.status_code == 503
    assert SECRET_PATH not in response.text and SECRET_LOGIN not in response.text
    assert "/var/lib" not in response.text and "@" not in response.text
    request_id = response.headers["x-request-id"]
    assert response.json()["request_id"] == request_id
    assert request_id in response.json()["message"]
    logged = [
        attrs
        for _, _, attrs in recorded(container.logger()).messages
        if attrs.get("request_id") == request_id and SECRET_PATH in str(attrs.get("detail"))
    ]
    assert logged, recorded(container.logger()).messages


def test_streamed_errors_carry_no_host_details_either(
    runtime: FakeRuntime, client: TestClient
) -> None:
    runtime.fail_create = RuntimeUnavailableError(f"engine said no at {SECRET_PATH}")
    headers = {**AUTH, "Accept": "text/event-stream"}

    response = client.post(
        f"/v1/chats/{uuid.uuid4()}/executions", json={"code": "hi"}, headers=headers
    )

    assert SECRET_PATH not in response.text


def test_output_flushed_a_byte_at_a_time_is_coalesced_into_few_events(client: TestClient) -> None:
    size = 20_000
    headers = {**AUTH, "Accept": "text/event-stream"}

    response = client.post(
        f"/v1/chats/{uuid.uuid4()}/executions", json={"code": f"flood:{size}"}, headers=headers
    )

    events = [block for block in response.text.split("\n\n") if block.startswith("event: stdout")]
    data = "".join(json.loads(event.split("data: ", 1)[1])["data"] for event in events)
    assert data == "x" * size
    assert len(events) < size // 20, len(events)
    assert '"exit_code":0' in response.text


def test_a_client_that_never_reads_cannot_grow_the_service_memory(
    runtime: FakeRuntime, live: LiveService
) -> None:
    chunks = 3000  # about 200 MB of output
    before = _rss_bytes()
    body = json.dumps({"code": f"bigflood:{chunks}"}).encode()
    with socket.create_connection(("127.0.0.1", live.service.http_port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            (
                f"POST /v1/chats/{uuid.uuid4()}/executions HTTP/1.1\r\nHost: sandboxd\r\n"
                f"Authorization: {AUTH['Authorization']}\r\nAccept: text/event-stream\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        # Never read: the execution still runs to its end and is recorded.
        _wait_for(lambda: f"bigflood:{chunks}" in runtime.finished, "the flood to finish")
        grown = _rss_bytes() - before

        assert grown < 100 * 1024 * 1024, f"RSS grew by {grown // 2**20} MiB"
        other = httpx.post(
            f"{live.http_url}/v1/chats/{uuid.uuid4()}/executions",
            json={"code": "still here"},
            headers=AUTH,
            timeout=_WAIT_S,
        )
        assert other.status_code == 200 and other.json()["stdout"] == "still here"
    _wait_for(
        lambda: recorded(live.container.logger()).named("stream_client_dropped"),
        "the slow client drop",
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [(2**40, INT32_MAX), (-(2**40), INT32_MIN), (INT32_MAX, INT32_MAX), (-3, -3)],
)
def test_exit_codes_past_int32_are_clamped(client: TestClient, code: int, expected: int) -> None:
    response = client.post(
        f"/v1/chats/{uuid.uuid4()}/executions", json={"code": f"exit:{code}"}, headers=AUTH
    )
    streamed = client.post(
        f"/v1/chats/{uuid.uuid4()}/executions",
        json={"code": f"exit:{code}"},
        headers={**AUTH, "Accept": "text/event-stream"},
    )

    assert response.json()["exit_code"] == expected
    assert f'"exit_code":{expected},' in streamed.text
