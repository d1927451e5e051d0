"""The gRPC caller: the interceptor checks the key once per call and the servicer acts as exactly
that caller, also when calls of several keys run at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from domain.tenant import Caller
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from testkit.container import make_container
from testkit.live import LiveService, live_service

KEYS = {"alice": "alice-secret", "bob": "bob-secret"}


class CountingAuthenticator(ApiKeyAuthenticator):
    def __init__(self) -> None:
        super().__init__([f"{name}:{secret}" for name, secret in KEYS.items()])
        self.calls = 0

    def authenticate(self, authorization: str | None) -> Caller:
        self.calls += 1
        return super().authenticate(authorization)


@pytest.fixture
def authenticator() -> CountingAuthenticator:
    return CountingAuthenticator()


@pytest.fixture
def live(authenticator: CountingAuthenticator) -> Iterator[LiveService]:
    container = make_container(max_inflight_executions=8)
    container.authenticator.override(authenticator)
    with live_service(container) as live:
        yield live


@pytest.fixture
def stub(live: LiveService) -> Iterator[Any]:
    with grpc.insecure_channel(live.grpc_target) as channel:
        yield pb_grpc.SandboxServiceStub(channel)


def auth(name: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {KEYS[name]}"),)


def test_the_key_is_checked_once_per_call(stub: Any, authenticator: CountingAuthenticator) -> None:
    chat = str(uuid.uuid4())
    stub.Execute(pb.ExecuteRequest(chat_id=chat, code="print(1)"), metadata=auth("alice"))
    before = authenticator.calls
    for _ in range(3):
        stub.Execute(pb.ExecuteRequest(chat_id=chat, code="print(1)"), metadata=auth("alice"))
    assert authenticator.calls - before == 3


def test_concurrent_calls_of_two_keys_each_act_as_their_own_caller(stub: Any) -> None:
    chats = {name: str(uuid.uuid4()) for name in KEYS}
    for name, chat in chats.items():
        stub.EnsureSandbox(pb.EnsureSandboxRequest(chat_id=chat), metadata=auth(name))

    def get(name: str, chat_owner: str) -> grpc.StatusCode:
        try:
            stub.GetSandbox(pb.ChatRequest(chat_id=chats[chat_owner]), metadata=auth(name))
        except grpc.RpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    calls = [(name, owner) for _ in range(20) for name in KEYS for owner in KEYS]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda call: get(*call), calls))
    for (name, owner), code in zip(calls, codes, strict=True):
        assert (code is grpc.StatusCode.OK) == (name == owner), (name, owner, code)


def test_an_unknown_key_is_refused(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetSandbox(
            pb.ChatRequest(chat_id=str(uuid.uuid4())),
            metadata=(("authorization", "Bearer nope"),),
        )
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
