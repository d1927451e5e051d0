"""Binary data frames (file content), attacked from both ends.

The host against a hijacked agent: a forged length, a frame for another request or where none
is expected, a stream cut inside a frame, a size claim that does not match what came.
The agent against a broken host stream: the same forgeries inside an upload. Either side drops
the connection rather than read on out of step, and the agent leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from adapter.agent import connection
from adapter.agent.client import AgentClient
from adapter.agent.connection import DATA_FRAME_MAX
from domain.errors import FileTooLargeError, SandboxGoneError
from domain.execution import ExecutionRequest
from domain.files import FILE_CHUNK_BYTES
from testkit.agent import AgentProcess, load_guest_agent

HEADER = struct.Struct(">BQI")


def data_frame(request_id: int, payload: bytes, length: int | None = None) -> bytes:
    return HEADER.pack(0, request_id, len(payload) if length is None else length) + payload


def answer(request_id: int, **fields: object) -> bytes:
    return json.dumps({"id": request_id, "type": "file_ok", **fields}).encode() + b"\n"


def test_host_and_agent_agree_on_the_frame_format() -> None:
    agent = load_guest_agent("sandbox_agent_frames")
    assert agent.DATA_HEADER.format == connection.DATA_HEADER.format == HEADER.format
    assert agent.DATA_FRAME_MAX == connection.DATA_FRAME_MAX == FILE_CHUNK_BYTES
    assert agent.DATA_MAGIC == connection.DATA_MAGIC == 0


# --- the host against a hijacked agent --------------------------------------------------------


def read_against(guest_bytes: bytes, close_after: bool = True) -> tuple[AgentClient, bytes]:
    """read_file on a client whose peer sends ``guest_bytes`` (then closes)."""
    host, guest = socket.socketpair()
    client = AgentClient(host)
    guest.sendall(guest_bytes)
    if close_after:
        guest.shutdown(socket.SHUT_WR)
    out = io.BytesIO()
    try:
        with pytest.raises(SandboxGoneError):
            client.read_file("a.bin", out.write)
    finally:
        guest.close()
    return client, out.getvalue()


def test_an_honest_download_in_frames_is_accepted() -> None:
    host, guest = socket.socketpair()
    client = AgentClient(host)
    digest = "0" * 64
    guest.sendall(
        data_frame(1, b"abc") + data_frame(1, b"de") + answer(1, path="a", size=5, sha256=digest)
    )
    out = io.BytesIO()
    try:
        assert client.read_file("a", out.write).size == 5
        assert out.getvalue() == b"abcde"
        assert not client.closed
    finally:
        guest.close()
        client.close()


def test_a_forged_length_is_refused_before_its_payload_is_awaited() -> None:
    started = time.monotonic()
    # Without the cap the client would wait for 4 GiB that never come (the peer stays open).
    client, got = read_against(data_frame(1, b"x" * 10, length=2**32 - 1), close_after=False)
    assert time.monotonic() - started < 5
    assert client.closed and got == b""


def test_a_frame_just_past_the_cap_is_refused() -> None:
    client, _ = read_against(data_frame(1, b"", length=DATA_FRAME_MAX + 1), close_after=False)
    assert client.closed


def test_a_data_frame_for_another_request_is_refused() -> None:
    client, got = read_against(data_frame(7, b"planted"))
    assert client.closed and got == b""


def test_a_stream_cut_inside_a_frame_is_a_gone_agent() -> None:
    client, got = read_against(data_frame(1, b"x" * 10, length=1000))
    assert client.closed and got == b""


def test_a_size_claim_that_does_not_match_the_frames_is_refused() -> None:
    client, got = read_against(data_frame(1, b"12345") + answer(1, path="a", size=9, sha256="0"))
    assert client.closed and got == b"12345"


def test_a_data_frame_where_none_is_expected_is_refused() -> None:
    host, guest = socket.socketpair()
    client = AgentClient(host, margin_s=5)
    guest.sendall(data_frame(1, b"x" * 100))
    try:
        with pytest.raises(SandboxGoneError, match="does not expect"):
            client.execute(ExecutionRequest("print(1)", timeout_s=1), 1000, lambda chunk: None)
        assert client.closed
    finally:
        guest.close()


# --- the agent against a broken host stream ---------------------------------------------------


def begin_upload(raw: socket.socket, path: str, request_id: int = 1) -> None:
    request = {"id": request_id, "op": "file_write", "path": path, "max_bytes": 10_000_000}
    raw.sendall(json.dumps(request).encode() + b"\n")
    ready = json.loads(raw.makefile("rb").readline())
    assert ready == {"id": request_id, "type": "file_ok"}


def assert_dropped(raw: socket.socket, workdir: Path, agent_process: AgentProcess) -> None:
    """The agent closed the connection, left no partial upload, and serves the next host."""
    raw.settimeout(10)
    # Closed with our bytes unread, the agent's end may answer with a reset.
    with contextlib.suppress(ConnectionResetError):
        assert raw.recv(1) == b""
    raw.close()
    deadline = time.monotonic() + 10
    while any(workdir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(workdir.iterdir()) == []
    client = agent_process.connect()
    try:
        assert client.ping() == "1"
    finally:
        client.close()


@pytest.mark.parametrize(
    "forged",
    [
        data_frame(1, b"", length=DATA_FRAME_MAX + 1),  # past the cap
        data_frame(1, b"", length=2**32 - 1),  # forged length
        data_frame(2, b"other request"),  # another request's id
        b'{"id": 1, "op": "ping"}\n',  # not a data frame at all
    ],
    ids=["oversized", "forged-length", "other-id", "json-inside-upload"],
)
def test_the_agent_drops_a_forged_data_frame_and_the_partial_file(
    agent_process: AgentProcess, forged: bytes
) -> None:
    raw = agent_process.raw()
    begin_upload(raw, "up.bin")
    raw.sendall(data_frame(1, b"first part") + forged)
    assert_dropped(raw, agent_process.workdir, agent_process)


def test_the_agent_drops_an_upload_cut_inside_a_frame(agent_process: AgentProcess) -> None:
    raw = agent_process.raw()
    begin_upload(raw, "up.bin")
    raw.sendall(data_frame(1, b"x" * 100, length=5000))
    raw.shutdown(socket.SHUT_WR)
    assert_dropped(raw, agent_process.workdir, agent_process)


def test_a_host_that_gives_up_midway_leaves_no_file(agent_process: AgentProcess) -> None:
    client = agent_process.connect()

    def chunks():
        yield b"x" * 3_000_000
        raise RuntimeError("the upload's source failed")

    with pytest.raises(RuntimeError):
        client.write_file("up.bin", chunks(), 10_000_000)
    assert client.closed
    fresh = agent_process.connect()
    try:
        fresh.ping()
        assert fresh.list_files("").entries == ()
        assert list(agent_process.workdir.iterdir()) == []
    finally:
        fresh.close()


def test_a_refusal_midway_is_answered_after_the_last_frame_and_keeps_step(
    agent_process: AgentProcess,
) -> None:
    client = agent_process.connect()
    try:
        with pytest.raises(FileTooLargeError):
            client.write_file("big.bin", [b"x" * 700_000] * 5, 1_000_000)
        assert not client.closed
        assert client.ping() == "1"
        assert list(agent_process.workdir.iterdir()) == []
    finally:
        client.close()


def test_uploads_and_downloads_of_many_frames_keep_every_byte(
    agent_process: AgentProcess,
) -> None:
    import hashlib
    import os

    data = os.urandom(3 * DATA_FRAME_MAX + 12345)
    client = agent_process.connect()
    # Odd chunk sizes: frames are cut at DATA_FRAME_MAX whatever the source's chunks are.
    pieces = [data[i : i + 700_001] for i in range(0, len(data), 700_001)]
    try:
        stored = client.write_file("d/big.bin", pieces, len(data))
        assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
        out = io.BytesIO()
        assert client.read_file("d/big.bin", out.write) == stored
        assert out.getvalue() == data
    finally:
        client.close()


def test_downloads_run_while_another_thread_waits(agent_process: AgentProcess) -> None:
    # One request at a time per connection: a second caller waits its turn, never interleaves.
    client = agent_process.connect()
    data = b"y" * (2 * DATA_FRAME_MAX)
    client.write_file("y.bin", [data], len(data))
    results: list[bytes] = []

    def fetch() -> None:
        out = io.BytesIO()
        client.read_file("y.bin", out.write)
        results.append(out.getvalue())

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert results == [data] * 3
    finally:
        client.close()
