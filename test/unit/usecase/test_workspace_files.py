"""WorkspaceFiles: the chat's lock, sandbox creation on upload, one replacement, refusals."""

from __future__ import annotations

import io

import pytest

from domain.errors import FilePathRefusedError, SandboxNotFoundError
from domain.tenant import Caller
from testkit.fakes import FakeFileStore
from testkit.world import CHAT, MAX_LIFETIME, TTL, World
from usecase.files import FileLimits, WorkspaceFiles
from usecase.sandbox import Lifetime

ALICE = Caller("alice")
BOB = Caller("bob")
ADMIN = Caller("ops", admin=True)


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


def test_another_key_gets_not_found_on_every_file_operation_and_changes_nothing(
    world: World,
) -> None:
    store = FakeFileStore(world.runtime)
    files = files_of(world, store)
    files.upload(CHAT, "secret.txt", lambda: [b"alice's"], ALICE)
    session = world.repository.get_active_by_chat_id(CHAT)
    read: list[bytes] = []
    calls = {
        "upload": lambda: files.upload(CHAT, "secret.txt", lambda: [b"bob's"], BOB),
        "upload_new": lambda: files.upload(CHAT, "planted.txt", lambda: [b"x"], BOB),
        "download": lambda: files.download(CHAT, "secret.txt", read.append, BOB),
        "list": lambda: files.list(CHAT, "", BOB),
        "delete": lambda: files.delete(CHAT, "secret.txt", BOB),
    }
    for name, call in calls.items():
        with pytest.raises(SandboxNotFoundError) as raised:
            call()
        # The same words as for a chat without a sandbox: nothing says whose it is.
        assert str(raised.value) == f"chat {CHAT} has no sandbox", name
    assert read == []
    # Nothing changed: same sandbox, same file, same deadline, no replacement.
    assert world.repository.get_active_by_chat_id(CHAT) == session
    assert len(world.runtime.create_calls) == 1
    assert world.runtime.stopped == []
    (container,) = store.workspaces
    assert store.workspaces[container] == {"secret.txt": b"alice's"}


def test_a_chat_without_a_sandbox_reads_the_same_as_another_keys(world: World) -> None:
    files = files_of(world, FakeFileStore(world.runtime))
    with pytest.raises(SandboxNotFoundError) as raised:
        files.list(CHAT, "", BOB)
    assert str(raised.value) == f"chat {CHAT} has no sandbox"


def test_the_owner_and_an_admin_reach_the_files_and_an_upload_records_the_owner(
    world: World,
) -> None:
    files = files_of(world, FakeFileStore(world.runtime))
    files.upload(CHAT, "a.txt", lambda: [b"a"], ALICE)
    session = world.repository.get_active_by_chat_id(CHAT)
    assert session is not None and session.owner == "alice"
    files.upload(CHAT, "b.txt", lambda: [b"b"], ADMIN)
    assert [e.path for e in files.list(CHAT, "", ALICE).entries] == ["a.txt", "b.txt"]
    out = io.BytesIO()
    files.download(CHAT, "b.txt", out.write, ADMIN)
    assert out.getvalue() == b"b"
    files.delete(CHAT, "a.txt", ADMIN)
    after = world.repository.get_active_by_chat_id(CHAT)
    assert after is not None and after.owner == "alice"  # an admin does not take it over
