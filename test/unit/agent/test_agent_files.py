"""Workspace files through the guest agent, attacks first: traversal, symlinks planted by user
code, giant files, a full workspace, frames forged by printing."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from adapter.agent.client import AgentClient
from domain.errors import (
    FilePathRefusedError,
    FileTooLargeError,
    WorkspaceFileNotFoundError,
)
from domain.execution import ExecutionRequest, Language
from testkit.agent import AgentProcess

MAX = 4 * 1024 * 1024


def put(agent: AgentClient, path: str, data: bytes, max_bytes: int = MAX):
    return agent.write_file(
        path,
        iter([data[i : i + 100_000] for i in range(0, len(data), 100_000)] or [b""]),
        max_bytes,
    )


def get(agent: AgentClient, path: str) -> bytes:
    out = io.BytesIO()
    agent.read_file(path, out.write)
    return out.getvalue()


def run(agent: AgentClient, code: str) -> str:
    result = agent.execute(ExecutionRequest(code, Language.PYTHON, 10.0), 65536)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_a_file_round_trips_with_size_and_digest(agent: AgentClient) -> None:
    data = os.urandom(1_000_000)
    stored = put(agent, "data/in.bin", data)
    assert (stored.path, stored.size, stored.sha256) == (
        "data/in.bin",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert get(agent, "data/in.bin") == data
    assert run(agent, "print(len(open('data/in.bin','rb').read()))") == f"{len(data)}\n"


def test_list_and_delete(agent: AgentClient) -> None:
    put(agent, "a.txt", b"aa")
    put(agent, "sub/b.txt", b"bbb")
    listing = agent.list_files("")
    assert {(e.path, e.size) for e in listing.entries} == {("a.txt", 2), ("sub/b.txt", 3)}
    assert [e.path for e in agent.list_files("sub/").entries] == ["sub/b.txt"]
    agent.delete_file("a.txt")
    with pytest.raises(WorkspaceFileNotFoundError):
        get(agent, "a.txt")
    with pytest.raises(WorkspaceFileNotFoundError):
        agent.delete_file("a.txt")


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../x", "", "a//b"])
def test_traversal_is_refused(agent: AgentClient, agent_process: AgentProcess, path: str) -> None:
    with pytest.raises(FilePathRefusedError):
        put(agent, path, b"x")
    with pytest.raises(FilePathRefusedError):
        get(agent, path)
    assert not (agent_process.directory / "escape.txt").exists()


def test_symlinks_planted_by_user_code_are_not_followed(
    agent: AgentClient, agent_process: AgentProcess
) -> None:
    outside = agent_process.directory / "secret.txt"
    outside.write_text("secret")
    run(
        agent,
        f"import os; os.symlink({str(outside)!r}, 'link.txt'); "
        f"os.symlink({str(agent_process.directory)!r}, 'linkdir')",
    )
    with pytest.raises(FilePathRefusedError):
        get(agent, "link.txt")
    with pytest.raises(FilePathRefusedError):
        get(agent, "linkdir/secret.txt")
    with pytest.raises(FilePathRefusedError):
        put(agent, "linkdir/planted.txt", b"x")
    assert not (agent_process.directory / "planted.txt").exists()
    # Writing over the link replaces the link itself, never the file it points to.
    put(agent, "link.txt", b"mine")
    assert outside.read_text() == "secret"
    assert get(agent, "link.txt") == b"mine"
    assert {e.path for e in agent.list_files("").entries} == {"link.txt"}


def test_a_file_past_the_limit_is_refused_and_leaves_nothing(agent: AgentClient) -> None:
    with pytest.raises(FileTooLargeError):
        put(agent, "big.bin", b"x" * 300_000, max_bytes=200_000)
    assert agent.list_files("").entries == ()


def test_a_fifo_is_not_read(agent: AgentClient) -> None:
    run(agent, "import os; os.mkfifo('pipe')")
    with pytest.raises(WorkspaceFileNotFoundError):
        get(agent, "pipe")
