"""Attacks on the gRPC API (issue 11, items 5-8): keys checked before a request is even parsed,
message size caps, host details in error details, byte-at-a-time floods, exit codes past int32."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from domain.errors import RuntimeUnavailableError
from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from testkit.container import API_KEY, make_container, recorded
from testkit.fakes import FakeRuntime
from testkit.live import LiveService, live_service

AUTH = (("authorization", f"Bearer {API_KEY}"),)
SECRET_PATH = "/var/lib/sandboxd-secret/run/agent.sock"
SECRET_LOGIN = "admin@db-7.internal.example"


@pytest.fixture
def runtime() -> Iterator[FakeRuntime]:
    runtime = FakeRuntime()
    yield runtime
    runtime.gate.set()


@pytest.fixture
def live(runtime: FakeRuntime) -> Iterator[LiveService]:
    container = make_container(runtime, grpc_max_receive_message_bytes=8192)
    with live_service(container) as live:
        yield live


@pytest.fixture
def channel(live: LiveService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(live.grpc_target) as channel:
        yield channel


def _metadata(error: grpc.RpcError) -> dict[str, str]:
    return dict(error.trailing_metadata())


@pytest.mark.parametrize("method", ["Execute", "ExecuteStream", "GetSandbox"])
def test_an_unauthenticated_call_is_refused_before_its_request_is_parsed(
    channel: grpc.Channel, runtime: FakeRuntime, method: str
) -> None:
    # Not a valid message: only a check that runs before deserialising can answer UNAUTHENTICATED.
    path = f"/sandboxd.v1.SandboxService/{method}"
    call = channel.unary_stream(path) if method == "ExecuteStream" else channel.unary_unary(path)

    with pytest.raises(grpc.RpcError) as refused:
        result = call(b"\xff\xff\xff\xff garbage")
        if method == "ExecuteStream":
            list(result)

    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert _metadata(refused.value)["sandboxd-error-code"] == "unauthenticated"
    assert runtime.executed == []


def test_messages_over_the_configured_cap_are_refused(channel: grpc.Channel) -> None:
    stub = pb_grpc.SandboxServiceStub(channel)

    with pytest.raises(grpc.RpcError) as refused:
        stub.Execute(pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code="x" * 20_000), metadata=AUTH)

    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_error_details_carry_no_host_details_but_the_log_does(
    channel: grpc.Channel, runtime: FakeRuntime, live: LiveService
) -> None:
    runtime.fail_create = RuntimeUnavailableError(f"no engine at {SECRET_PATH} as {SECRET_LOGIN}")
    stub = pb_grpc.SandboxServiceStub(channel)

    with pytest.raises(grpc.RpcError) as failed:
        stub.Execute(pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code="hi"), metadata=AUTH)

    details = failed.value.details()
    assert SECRET_PATH not in details and SECRET_LOGIN not in details
    request_id = _metadata(failed.value)["x-request-id"]
    assert request_id in details
    logged = [
        attrs
        for _, _, attrs in recorded(live.container.logger()).messages
        if attrs.get("request_id") == request_id and SECRET_PATH in str(attrs.get("detail"))
    ]
    assert logged


def test_output_flushed_a_byte_at_a_time_is_coalesced(channel: grpc.Channel) -> None:
    size = 20_000
    stub = pb_grpc.SandboxServiceStub(channel)

    events = list(
        stub.ExecuteStream(
            pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code=f"flood:{size}"), metadata=AUTH
        )
    )

    output = [event.output.data for event in events if event.WhichOneof("event") == "output"]
    assert "".join(output) == "x" * size
    assert len(output) < size // 20


@pytest.mark.parametrize(("code", "expected"), [(2**40, 2**31 - 1), (-(2**40), -(2**31)), (-3, -3)])
def test_exit_codes_past_int32_are_clamped(channel: grpc.Channel, code: int, expected: int) -> None:
    stub = pb_grpc.SandboxServiceStub(channel)
    request = pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code=f"exit:{code}")

    response = stub.Execute(request, metadata=AUTH)
    streamed = list(stub.ExecuteStream(request, metadata=AUTH))

    assert response.result.exit_code == expected
    assert streamed[-1].result.result.exit_code == expected


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_stream_client_that_never_reads_cannot_grow_the_service_memory(
    channel: grpc.Channel, runtime: FakeRuntime, live: LiveService
) -> None:
    chunks = 3000  # about 200 MB of output
    stub = pb_grpc.SandboxServiceStub(channel)
    before = _rss_bytes()

    call = stub.ExecuteStream(
        pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code=f"bigflood:{chunks}"), metadata=AUTH
    )
    try:
        # Never read: the execution still runs to its end and is recorded.
        _wait_for(lambda: f"bigflood:{chunks}" in runtime.finished, "the flood to finish")
        grown = _rss_bytes() - before

        assert grown < 100 * 1024 * 1024, f"RSS grew by {grown // 2**20} MiB"
        other = stub.Execute(
            pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code="still here"), metadata=AUTH
        )
        assert other.result.stdout == "still here"
        _wait_for(
            lambda: recorded(live.container.logger()).named("stream_client_dropped"),
            "the slow client drop",
        )
    finally:
        call.cancel()
