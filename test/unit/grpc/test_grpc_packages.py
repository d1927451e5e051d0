"""Packages over gRPC: EnsureSandboxRequest and ExecuteRequest carry them, Sandbox shows them,
and a malformed requirement is INVALID_ARGUMENT with invalid_package."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from dependency_injector import providers

from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from testkit.container import API_KEY, make_container
from testkit.fakes import FakeEnvironmentRuntime, FakeEnvironmentStore, FakeRuntime
from testkit.live import live_service
from usecase.environment import EnvironmentProvisioning

AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture
def stub() -> Iterator[Any]:
    runtime = FakeRuntime()
    container = make_container(runtime)
    container.environments.override(
        providers.Object(
            EnvironmentProvisioning(FakeEnvironmentStore(), FakeEnvironmentRuntime(runtime))
        )
    )
    try:
        with live_service(container) as live, grpc.insecure_channel(live.grpc_target) as channel:
            yield pb_grpc.SandboxServiceStub(channel)
    finally:
        runtime.gate.set()


def test_packages_through_ensure_and_execute(stub: Any) -> None:
    chat = str(uuid.uuid4())
    ensured = stub.EnsureSandbox(
        pb.EnsureSandboxRequest(chat_id=chat, packages=["lodash@4.17.21"], language="javascript"),
        metadata=AUTH,
    )
    assert list(ensured.packages) == ["npm:lodash@4.17.21"]
    executed = stub.Execute(
        pb.ExecuteRequest(chat_id=chat, code="x", packages=["Tabulate"]), metadata=AUTH
    )
    assert list(executed.sandbox.packages) == ["tabulate", "npm:lodash@4.17.21"]
    assert executed.sandbox.session_id == ensured.session_id
    events = list(
        stub.ExecuteStream(
            pb.ExecuteRequest(chat_id=chat, code="y", packages=["six"]), metadata=AUTH
        )
    )
    assert "six" in events[-1].result.sandbox.packages


def test_a_malformed_requirement_is_invalid_argument(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.EnsureSandbox(
            pb.EnsureSandboxRequest(chat_id=str(uuid.uuid4()), packages=["-e ."]), metadata=AUTH
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert dict(refused.value.trailing_metadata())["sandboxd-error-code"] == "invalid_package"
