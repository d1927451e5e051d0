"""The file RPCs over a live service (in-memory store, fake runtime and file store)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from testkit.container import API_KEY, make_container
from testkit.live import LiveService, live_service

AUTH = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture
def stub() -> Iterator[Any]:
    live: LiveService
    with (
        live_service(make_container(max_file_bytes=1_000_000)) as live,
        grpc.insecure_channel(live.grpc_target) as channel,
    ):
        yield pb_grpc.SandboxServiceStub(channel)


def upload(stub: Any, chat: str, path: str, data: bytes) -> Any:
    def parts() -> Iterator[Any]:
        yield pb.UploadFileRequest(header=pb.FileRequest(chat_id=chat, path=path))
        for start in range(0, len(data), 100_000):
            yield pb.UploadFileRequest(chunk=data[start : start + 100_000])

    return stub.UploadFile(parts(), metadata=AUTH)


def test_upload_download_list_delete(stub: Any) -> None:
    chat = str(uuid.uuid4())
    data = bytes(range(256)) * 2000
    stored = upload(stub, chat, "d/f.bin", data)
    assert (stored.path, stored.size, stored.sha256) == (
        "d/f.bin",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    parts = list(stub.DownloadFile(pb.FileRequest(chat_id=chat, path="d/f.bin"), metadata=AUTH))
    assert parts[0].WhichOneof("part") == "info" and parts[0].info.sha256 == stored.sha256
    assert b"".join(p.chunk for p in parts[1:]) == data
    listing = stub.ListFiles(pb.ListFilesRequest(chat_id=chat, prefix="d/"), metadata=AUTH)
    assert [(f.path, f.size) for f in listing.files] == [("d/f.bin", len(data))]
    stub.DeleteFile(pb.FileRequest(chat_id=chat, path="d/f.bin"), metadata=AUTH)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.DownloadFile(pb.FileRequest(chat_id=chat, path="d/f.bin"), metadata=AUTH))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_refusals_carry_their_codes(stub: Any) -> None:
    chat = str(uuid.uuid4())
    with pytest.raises(grpc.RpcError) as caught:
        upload(stub, chat, "../x", b"x")
    assert dict(caught.value.trailing_metadata())["sandboxd-error-code"] == "path_refused"
    with pytest.raises(grpc.RpcError) as caught:
        upload(stub, chat, "big", b"x" * 1_000_001)
    assert dict(caught.value.trailing_metadata())["sandboxd-error-code"] == "file_too_large"
