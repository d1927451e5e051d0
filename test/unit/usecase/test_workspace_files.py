"""WorkspaceFiles: the chat's lock, sandbox creation on upload, one replacement, refusals."""

from __future__ import annotations

import io

import pytest

from domain.errors import FilePathRefusedError, SandboxNotFoundError
from testkit.fakes import FakeFileStore
from testkit.world import CHAT, MAX_LIFETIME, TTL, World
from usecase.files import FileLimits, WorkspaceFiles
from usecase.sandbox import Lifetime


def files_of(world: World, store: FakeFileStore) -> WorkspaceFiles:
    return WorkspaceFiles(
        world.repository,
        world.locker,
        world.runtime,
        store,
        world.clock,
        world.logger,
        Lifetime(TTL, MAX_LIFETIME),
        FileLimits(max_file_bytes=1000),
    )


def test_an_upload_creates_the_sandbox_and_renews_it(world: World) -> None:
    store = FakeFileStore(world.runtime)
    files = files_of(world, store)
    stored = files.upload(CHAT, "a.txt", lambda: [b"ab", b"c"])
    assert stored.size == 3
    assert len(world.runtime.create_calls) == 1
    assert "file_uploaded" in world.logger.events()
    session = world.repository.get_active_by_chat_id(CHAT)
    assert session is not None and session.last_activity_at == world.clock.now()
    out = io.BytesIO()
    files.download(CHAT, "a.txt", out.write)
    assert out.getvalue() == b"abc"
    assert [e.path for e in files.list(CHAT).entries] == ["a.txt"]


def test_a_gone_sandbox_is_replaced_once_and_the_upload_sent_again(world: World) -> None:
    store = FakeFileStore(world.runtime)
    files = files_of(world, store)
    files.upload(CHAT, "a.txt", lambda: [b"x"])
    world.runtime.alive.clear()  # the container vanished behind the service's back
    stored = files.upload(CHAT, "b.txt", lambda: iter([b"yy"]))
    assert stored.size == 2
    assert len(world.runtime.create_calls) == 2
    assert "sandbox_found_dead" in world.logger.events()


def test_download_list_delete_need_a_sandbox(world: World) -> None:
    files = files_of(world, FakeFileStore(world.runtime))
    with pytest.raises(SandboxNotFoundError):
        files.download(CHAT, "a.txt", lambda chunk: None)
    with pytest.raises(SandboxNotFoundError):
        files.list(CHAT)
    with pytest.raises(SandboxNotFoundError):
        files.delete(CHAT, "a.txt")
    assert world.runtime.create_calls == []


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "a/../../x", "", "a//b", "./a"])
def test_bad_paths_touch_nothing(world: World, path: str) -> None:
    files = files_of(world, FakeFileStore(world.runtime))
    with pytest.raises(FilePathRefusedError):
        files.upload(CHAT, path, lambda: [b"x"])
    assert world.runtime.create_calls == []
    assert world.locker.chat_ids == []
