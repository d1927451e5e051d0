"""The gRPC API over a live service (in-memory store, scripted runtime), and codegen freshness."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from entrypoint.grpc import codegen
from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from testkit.container import API_KEY, make_container
from testkit.fakes import FakeRuntime
from testkit.live import LiveService, live_service

AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture
def runtime() -> Iterator[FakeRuntime]:
    runtime = FakeRuntime()
    yield runtime
    runtime.gate.set()


@pytest.fixture
def live(runtime: FakeRuntime) -> Iterator[LiveService]:
    with live_service(make_container(runtime, max_inflight_executions=1)) as live:
        yield live


@pytest.fixture
def stub(live: LiveService) -> Iterator[Any]:
    with grpc.insecure_channel(live.grpc_target) as channel:
        yield pb_grpc.SandboxServiceStub(channel)


def error_code(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata())["sandboxd-error-code"]


def test_execute_runs_code_and_returns_the_sandbox(stub: Any) -> None:
    chat = str(uuid.uuid4())

    response = stub.Execute(pb.ExecuteRequest(chat_id=chat, code="hello"), metadata=AUTH)

    assert response.result.stdout == "hello"
    assert response.result.HasField("exit_code") and response.result.exit_code == 0
    assert response.sandbox.chat_id == chat
    assert response.sandbox.status == "running"


def test_a_timed_out_execution_is_a_normal_response(stub: Any) -> None:
    response = stub.Execute(
        pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code="timeout", timeout_s=1), metadata=AUTH
    )

    assert response.result.timed_out
    assert not response.result.HasField("exit_code")


def test_execute_stream_sends_chunks_then_the_result(stub: Any) -> None:
    events = list(
        stub.ExecuteStream(
            pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code="stream:a,b"), metadata=AUTH
        )
    )

    # Chunks that come together may be coalesced into fewer events; their order stays.
    kinds = [event.WhichOneof("event") for event in events]
    assert set(kinds[:-1]) == {"output"} and kinds[-1] == "result"
    assert "".join(event.output.data for event in events[:-1]) == "ab"
    assert events[0].output.stream == pb.OutputChunk.STDOUT
    assert events[-1].result.result.stdout == "ab"


def test_sandbox_lifecycle(stub: Any) -> None:
    chat = pb.ChatRequest(chat_id=str(uuid.uuid4()))
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetSandbox(chat, metadata=AUTH)

    ensured = stub.EnsureSandbox(chat, metadata=AUTH)
    fetched = stub.GetSandbox(chat, metadata=AUTH)
    renewed = stub.RenewSandbox(chat, metadata=AUTH)
    destroyed = stub.DestroySandbox(chat, metadata=AUTH)
    again = stub.DestroySandbox(chat, metadata=AUTH)

    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert error_code(missing.value) == "sandbox_not_found"
    assert fetched.session_id == ensured.session_id
    assert renewed.expires_at.ToDatetime() >= ensured.expires_at.ToDatetime()
    assert destroyed.destroyed and destroyed.sandbox.session_id == ensured.session_id
    assert not again.destroyed


@pytest.mark.parametrize(
    ("metadata", "request_", "status", "code"),
    [
        ((), {"code": "x"}, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
        (
            (("authorization", "Bearer nope"),),
            {"code": "x"},
            grpc.StatusCode.UNAUTHENTICATED,
            "unauthenticated",
        ),
        (
            AUTH,
            {"code": "x", "chat_id": "nope"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_chat_id",
        ),
        (AUTH, {"code": "x" * 300_000}, grpc.StatusCode.INVALID_ARGUMENT, "code_too_large"),
        (
            AUTH,
            {"code": "x", "language": "cobol"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "unsupported_language",
        ),
    ],
)
def test_errors_map_to_grpc_status_codes(
    stub: Any,
    runtime: FakeRuntime,
    metadata: tuple[tuple[str, str], ...],
    request_: dict[str, str],
    status: grpc.StatusCode,
    code: str,
) -> None:
    fields: dict[str, Any] = {"chat_id": str(uuid.uuid4()), **request_}
    with pytest.raises(grpc.RpcError) as failure:
        stub.Execute(pb.ExecuteRequest(**fields), metadata=metadata)
    with pytest.raises(grpc.RpcError) as streamed:
        list(stub.ExecuteStream(pb.ExecuteRequest(**fields), metadata=metadata))

    assert failure.value.code() is status
    assert error_code(failure.value) == code
    assert streamed.value.code() is status
    assert error_code(streamed.value) == code
    assert runtime.executed == []


def test_too_many_executions_is_resource_exhausted(stub: Any, runtime: FakeRuntime) -> None:
    blocked = threading.Thread(
        target=lambda: stub.Execute(
            pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code="block"), metadata=AUTH
        )
    )
    blocked.start()
    try:
        assert runtime.blocked.acquire(timeout=10)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Execute(pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code="x"), metadata=AUTH)
    finally:
        runtime.gate.set()
        blocked.join(10)

    assert failure.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_code(failure.value) == "too_many_executions"


def test_the_committed_generated_code_is_fresh() -> None:
    assert codegen.stale_files() == []
