"""HTTP routes of workspace files, over the real composition root with in-memory fakes."""

from __future__ import annotations

import hashlib
import uuid

from fastapi.testclient import TestClient

from entrypoint.container import Container
from testkit.container import AUTH, make_container
from testkit.fakes import FakeFileStore, FakeRuntime


def url(chat: str, path: str = "") -> str:
    return f"/v1/chats/{chat}/files" + (f"/{path}" if path else "")


def test_upload_creates_the_sandbox_then_download_list_delete(
    client: TestClient, runtime: FakeRuntime
) -> None:
    chat = str(uuid.uuid4())
    data = b"a,b\n1,2\n" * 1000
    put = client.put(url(chat, "data/in.csv"), content=data, headers=AUTH)
    assert put.status_code == 200, put.text
    assert put.json() == {
        "path": "data/in.csv",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert len(runtime.create_calls) == 1
    got = client.get(url(chat, "data/in.csv"), headers=AUTH)
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"].startswith("text/csv")
    assert got.headers["x-sandboxd-sha256"] == hashlib.sha256(data).hexdigest()
    listing = client.get(url(chat), params={"prefix": "data/"}, headers=AUTH).json()
    assert [(f["path"], f["size"]) for f in listing["files"]] == [("data/in.csv", len(data))]
    assert listing["truncated"] is False
    assert client.delete(url(chat, "data/in.csv"), headers=AUTH).status_code == 204
    missing = client.get(url(chat, "data/in.csv"), headers=AUTH)
    assert (missing.status_code, missing.json()["code"]) == (404, "file_not_found")


def test_traversal_is_refused_with_422(client: TestClient, runtime: FakeRuntime) -> None:
    chat = str(uuid.uuid4())
    for path in ("..%2Fescape", "a/..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        response = client.put(url(chat, path), content=b"x", headers=AUTH)
        assert (response.status_code, response.json()["code"]) == (422, "path_refused"), path
    assert runtime.create_calls == []


def test_a_symlink_that_leads_out_is_refused_with_422(
    client: TestClient, container: Container
) -> None:
    chat = str(uuid.uuid4())
    client.put(url(chat, "ok.txt"), content=b"x", headers=AUTH)
    store = container.file_store()
    assert isinstance(store, FakeFileStore)
    store.symlinks.add("leak")
    response = client.get(url(chat, "leak"), headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (422, "path_refused")


def test_a_file_past_the_limit_is_413_and_creates_no_sandbox(
    runtime: FakeRuntime,
) -> None:
    container = make_container(runtime, max_file_bytes=1000)
    with TestClient(container.http_app(), raise_server_exceptions=False) as client:
        chat = str(uuid.uuid4())
        response = client.put(url(chat, "big.bin"), content=b"x" * 1001, headers=AUTH)
        assert (response.status_code, response.json()["code"]) == (413, "file_too_large")

        def chunked():
            for _ in range(20):
                yield b"y" * 100

        response = client.put(url(chat, "big2.bin"), content=chunked(), headers=AUTH)
        assert (response.status_code, response.json()["code"]) == (413, "file_too_large")
    assert runtime.create_calls == []


def test_a_full_workspace_is_507(client: TestClient, container: Container) -> None:
    chat = str(uuid.uuid4())
    store = container.file_store()
    assert isinstance(store, FakeFileStore)
    store.capacity = 100
    response = client.put(url(chat, "f.bin"), content=b"x" * 200, headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (507, "workspace_full")


def test_files_need_a_key(client: TestClient) -> None:
    chat = str(uuid.uuid4())
    assert client.put(url(chat, "a"), content=b"x").status_code == 401
    assert client.get(url(chat)).status_code == 401


def test_download_from_a_chat_without_sandbox_is_404(client: TestClient) -> None:
    response = client.get(url(str(uuid.uuid4()), "a.txt"), headers=AUTH)
    assert (response.status_code, response.json()["code"]) == (404, "sandbox_not_found")
