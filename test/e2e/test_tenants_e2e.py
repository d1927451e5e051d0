"""Tenants over the real service: two keys, each sees and runs only its own chats, on HTTP and
gRPC; an admin key sees all; a new chat past the key's cap is a 429 sandbox_limit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from testkit.service import ServiceFactory, ServiceProcess

ALICE = "alice-" + uuid.uuid4().hex
BOB = "bob-" + uuid.uuid4().hex
ADMIN = "ops-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def service(module_services: ServiceFactory) -> ServiceProcess:
    return module_services(
        api_keys=f"alice:{ALICE},bob:{BOB}",
        admin_keys=f"ops:{ADMIN}",
        max_sandboxes_per_key="2",
    )


def http(service: ServiceProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{service.http_url}/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


@pytest.fixture(scope="module")
def stub(service: ServiceProcess) -> Iterator[Any]:
    with grpc.insecure_channel(service.grpc_target) as channel:
        yield pb_grpc.SandboxServiceStub(channel)


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def test_over_http_another_key_gets_404_on_every_route(service: ServiceProcess) -> None:
    chat = str(uuid.uuid4())
    with http(service, ALICE) as alice, http(service, BOB) as bob:
        created = alice.post(f"/chats/{chat}/executions", json={"code": "x = 41"})
        assert created.status_code == 200, created.text
        attempts = {
            "execute": bob.post(f"/chats/{chat}/executions", json={"code": "print(x)"}),
            "ensure": bob.put(f"/chats/{chat}/sandbox"),
            "get": bob.get(f"/chats/{chat}/sandbox"),
            "renew": bob.post(f"/chats/{chat}/sandbox/renew"),
            "delete": bob.delete(f"/chats/{chat}/sandbox"),
        }
        for route, response in attempts.items():
            assert response.status_code == 404, (route, response.text)
            assert response.json()["code"] == "sandbox_not_found", route
        stream = bob.post(
            f"/chats/{chat}/executions",
            json={"code": "print(x)"},
            headers={"Accept": "text/event-stream"},
        )
        assert stream.status_code == 404
        # Alice's chat is untouched: its state is there.
        after = alice.post(f"/chats/{chat}/executions", json={"code": "print(x + 1)"})
        assert after.json()["stdout"] == "42\n"
        assert not after.json()["sandbox_replaced"]
        assert [s["chat_id"] for s in alice.get("/sandboxes").json()["items"]] == [chat]
        assert bob.get("/sandboxes").json()["items"] == []
        alice.delete(f"/chats/{chat}/sandbox")


def test_over_grpc_another_key_gets_not_found(service: ServiceProcess, stub: Any) -> None:
    chat = str(uuid.uuid4())
    stub.Execute(pb.ExecuteRequest(chat_id=chat, code="x = 1"), metadata=auth(ALICE))
    calls = {
        "Execute": lambda: stub.Execute(
            pb.ExecuteRequest(chat_id=chat, code="print(x)"), metadata=auth(BOB)
        ),
        "ExecuteStream": lambda: list(
            stub.ExecuteStream(pb.ExecuteRequest(chat_id=chat, code="1"), metadata=auth(BOB))
        ),
        "EnsureSandbox": lambda: stub.EnsureSandbox(
            pb.EnsureSandboxRequest(chat_id=chat), metadata=auth(BOB)
        ),
        "GetSandbox": lambda: stub.GetSandbox(pb.ChatRequest(chat_id=chat), metadata=auth(BOB)),
        "RenewSandbox": lambda: stub.RenewSandbox(pb.ChatRequest(chat_id=chat), metadata=auth(BOB)),
        "DestroySandbox": lambda: stub.DestroySandbox(
            pb.ChatRequest(chat_id=chat), metadata=auth(BOB)
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND, name
    mine = stub.GetSandbox(pb.ChatRequest(chat_id=chat), metadata=auth(ALICE))
    assert mine.chat_id == chat
    stub.DestroySandbox(pb.ChatRequest(chat_id=chat), metadata=auth(ADMIN))


def test_an_admin_key_sees_and_runs_every_chat(service: ServiceProcess) -> None:
    chats = [str(uuid.uuid4()), str(uuid.uuid4())]
    with http(service, ALICE) as alice, http(service, BOB) as bob, http(service, ADMIN) as ops:
        alice.put(f"/chats/{chats[0]}/sandbox").raise_for_status()
        bob.put(f"/chats/{chats[1]}/sandbox").raise_for_status()
        listed = {s["chat_id"] for s in ops.get("/sandboxes").json()["items"]}
        assert set(chats) <= listed
        ran = ops.post(f"/chats/{chats[0]}/executions", json={"code": "print(3)"})
        assert ran.json()["stdout"] == "3\n"
        for chat in chats:
            assert ops.delete(f"/chats/{chat}/sandbox").status_code == 204
        assert alice.get("/sandboxes").json()["items"] == []


def test_a_new_chat_past_the_keys_cap_is_429_and_its_chats_keep_working(
    service: ServiceProcess,
) -> None:
    chats = [str(uuid.uuid4()) for _ in range(3)]
    with http(service, BOB) as bob, http(service, ALICE) as alice:
        for chat in chats[:2]:
            bob.put(f"/chats/{chat}/sandbox").raise_for_status()
        refused = bob.post(f"/chats/{chats[2]}/executions", json={"code": "print(1)"})
        assert refused.status_code == 429
        assert refused.json()["code"] == "sandbox_limit"
        assert refused.headers["Retry-After"]
        ok = bob.post(f"/chats/{chats[0]}/executions", json={"code": "print(2)"})
        assert ok.status_code == 200
        # Another key's new chat is not refused by Bob's cap.
        other = str(uuid.uuid4())
        assert alice.put(f"/chats/{other}/sandbox").status_code == 200
        for chat in chats[:2]:
            bob.delete(f"/chats/{chat}/sandbox")
        alice.delete(f"/chats/{other}/sandbox")


def test_over_http_another_key_gets_404_on_every_file_route(service: ServiceProcess) -> None:
    chat = str(uuid.uuid4())
    with http(service, ALICE) as alice, http(service, BOB) as bob:
        put = alice.put(f"/chats/{chat}/files/secret.txt", content=b"alice's secret")
        assert put.status_code == 200, put.text
        attempts = {
            "put": bob.put(f"/chats/{chat}/files/secret.txt", content=b"bob was here"),
            "put_new": bob.put(f"/chats/{chat}/files/planted.py", content=b"import os"),
            "get": bob.get(f"/chats/{chat}/files/secret.txt"),
            "list": bob.get(f"/chats/{chat}/files"),
            "delete": bob.delete(f"/chats/{chat}/files/secret.txt"),
        }
        for route, response in attempts.items():
            assert response.status_code == 404, (route, response.text)
            assert response.json()["code"] == "sandbox_not_found", route
            assert "secret" not in response.text, route
        # Alice's file is intact and nothing was planted next to it.
        got = alice.get(f"/chats/{chat}/files/secret.txt")
        assert got.content == b"alice's secret"
        listed = alice.get(f"/chats/{chat}/files").json()["files"]
        assert [f["path"] for f in listed] == ["secret.txt"]
        alice.delete(f"/chats/{chat}/sandbox")


def test_over_grpc_another_key_gets_not_found_on_every_file_call(
    service: ServiceProcess, stub: Any
) -> None:
    chat = str(uuid.uuid4())

    def upload(key: str, path: str, data: bytes) -> Any:
        header = pb.UploadFileRequest(header=pb.FileRequest(chat_id=chat, path=path))
        return stub.UploadFile(iter([header, pb.UploadFileRequest(chunk=data)]), metadata=auth(key))

    assert upload(ALICE, "secret.txt", b"alice's secret").size == 14
    calls = {
        "UploadFile": lambda: upload(BOB, "secret.txt", b"bob was here"),
        "UploadFile(new)": lambda: upload(BOB, "planted.py", b"import os"),
        "DownloadFile": lambda: list(
            stub.DownloadFile(pb.FileRequest(chat_id=chat, path="secret.txt"), metadata=auth(BOB))
        ),
        "ListFiles": lambda: stub.ListFiles(pb.ListFilesRequest(chat_id=chat), metadata=auth(BOB)),
        "DeleteFile": lambda: stub.DeleteFile(
            pb.FileRequest(chat_id=chat, path="secret.txt"), metadata=auth(BOB)
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND, name
    parts = list(
        stub.DownloadFile(pb.FileRequest(chat_id=chat, path="secret.txt"), metadata=auth(ALICE))
    )
    assert b"".join(p.chunk for p in parts if p.WhichOneof("part") == "chunk") == b"alice's secret"
    listed = stub.ListFiles(pb.ListFilesRequest(chat_id=chat), metadata=auth(ALICE))
    assert [f.path for f in listed.files] == ["secret.txt"]
    stub.DestroySandbox(pb.ChatRequest(chat_id=chat), metadata=auth(ALICE))
