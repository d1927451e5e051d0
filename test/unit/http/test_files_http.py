"""HTTP routes of workspace files, over the real composition root with in-memory fakes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sandboxd_client import AsyncSandboxdClient, SandboxdClient, SandboxdError

from entrypoint.cli import main
from entrypoint.container import Container
from testkit.container import API_KEY, AUTH, make_container
from testkit.fakes import FakeFileStore, FakeRuntime
from testkit.live import live_service


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


def test_the_python_client_uploads_downloads_lists_deletes(tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x00\x01" * 300_000)
    chat = uuid.uuid4()
    with (
        live_service(make_container()) as live,
        SandboxdClient(live.http_url, api_key=API_KEY) as client,
    ):
        stored = client.upload_file(chat, "dir/in.bin", source)
        assert stored.size == 600_000
        assert client.upload_file(chat, "b.txt", io.BytesIO(b"hello")).size == 5
        out = io.BytesIO()
        assert client.download_file(chat, "dir/in.bin", out).sha256 == stored.sha256
        assert out.getvalue() == source.read_bytes()
        client.download_file(chat, "b.txt", tmp_path / "b.txt")
        assert (tmp_path / "b.txt").read_bytes() == b"hello"
        assert [f.path for f in client.list_files(chat)] == ["b.txt", "dir/in.bin"]
        client.delete_file(chat, "b.txt")
        with pytest.raises(SandboxdError) as caught:
            client.download_file(chat, "b.txt", io.BytesIO())
        assert caught.value.code == "file_not_found"


def test_the_async_python_client_has_the_same_file_methods(tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"\x02\x03" * 700_000)
    chat = uuid.uuid4()

    async def scenario(url: str) -> None:
        async with AsyncSandboxdClient(url, api_key=API_KEY) as client:
            stored = await client.upload_file(chat, "dir/in.bin", source)
            assert stored.size == 1_400_000
            assert (await client.upload_file(chat, "b.txt", io.BytesIO(b"hello"))).size == 5
            out = io.BytesIO()
            assert (await client.download_file(chat, "dir/in.bin", out)).sha256 == stored.sha256
            assert out.getvalue() == source.read_bytes()
            await client.download_file(chat, "b.txt", tmp_path / "b.txt")
            assert (tmp_path / "b.txt").read_bytes() == b"hello"
            assert [f.path for f in await client.list_files(chat)] == ["b.txt", "dir/in.bin"]
            await client.delete_file(chat, "b.txt")
            with pytest.raises(SandboxdError) as caught:
                await client.download_file(chat, "b.txt", io.BytesIO())
            assert caught.value.code == "file_not_found"

    with live_service(make_container()) as live:
        asyncio.run(scenario(live.http_url))


def test_the_cli_puts_gets_lists_and_removes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    container = make_container()
    chat = str(uuid.uuid4())
    (tmp_path / "a.csv").write_text("x\n1\n")
    assert (
        main(["files", "--chat-id", chat, "put", str(tmp_path / "a.csv"), "a.csv"], container) == 0
    )
    assert json.loads(capsys.readouterr().out)["size"] == 4
    assert (
        main(["files", "--chat-id", chat, "get", "a.csv", str(tmp_path / "b.csv")], container) == 0
    )
    assert (tmp_path / "b.csv").read_text() == "x\n1\n"
    capsys.readouterr()
    assert main(["files", "--chat-id", chat, "ls"], container) == 0
    assert [f["path"] for f in json.loads(capsys.readouterr().out)["files"]] == ["a.csv"]
    assert main(["files", "--chat-id", chat, "rm", "a.csv"], container) == 0
    assert main(["files", "--chat-id", chat, "rm", "../x"], container) == 2


@pytest.mark.parametrize("path", ["../sandbox", "./../sandbox", "a/../../sandbox", "..", "."])
def test_a_dot_segment_path_from_the_python_client_cannot_reach_another_route(
    path: str, runtime: FakeRuntime
) -> None:
    """An HTTP client resolves '..' away: 'files/../sandbox' would become DELETE .../sandbox
    and destroy the chat's sandbox. Both clients must send the path as the caller gave it."""
    chat = uuid.uuid4()
    container = make_container(runtime=runtime)
    with (
        live_service(container) as live,
        SandboxdClient(live.http_url, api_key=API_KEY) as client,
    ):
        client.upload_file(chat, "keep.txt", io.BytesIO(b"x"))
        for attempt in (
            lambda: client.delete_file(chat, path),
            lambda: client.download_file(chat, path, io.BytesIO()),
            lambda: client.upload_file(chat, path, io.BytesIO(b"y")),
        ):
            with pytest.raises(SandboxdError) as caught:
                attempt()
            assert (caught.value.status, caught.value.code) == (422, "path_refused")
        sandbox = client.get_sandbox(chat)
        assert sandbox is not None and sandbox.status == "running"
        assert [f.path for f in client.list_files(chat)] == ["keep.txt"]
    assert runtime.stopped == []


def test_chat_ids_and_pool_names_are_one_url_segment_in_the_python_client() -> None:
    from sandboxd_client import calls

    assert calls.get_pool("../sandboxes").url == "/v1/pools/..%2Fsandboxes"
    assert calls.delete_file("a/b", "x").url == "/v1/chats/a%2Fb/files/x"
    for bad in ("..", ".", ""):
        with pytest.raises(ValueError):
            calls.delete_pool(bad)
