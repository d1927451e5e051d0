"""Host side of the guest agent protocol (see adapter/agent/guest/sandbox_agent.py).

Used by every runtime: the Docker channel and the QEMU chardev are both Unix sockets on the host.
The guest is untrusted: frames are size-capped and type-checked, and anything that is not a valid
answer to the request in flight is treated like a dead agent. Every request has a total deadline
(an execution: its timeout plus a margin) and a byte budget for everything the agent sends back,
so a wedged or hijacked agent that trickles bytes or streams frames for ever cannot hold the
caller (a chat lock, a worker thread, a lock connection) past that deadline.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from domain.errors import (
    FilePathRefusedError,
    FileTooLargeError,
    SandboxGoneError,
    SandboxServiceError,
    WorkspaceFileNotFoundError,
    WorkspaceFullError,
)
from domain.execution import (
    ChangedFile,
    ExecutionRequest,
    ExecutionResult,
    OutputChunk,
    OutputStream,
    RichOutput,
)
from domain.files import FILE_CHUNK_BYTES, StoredFile, WorkspaceEntry, WorkspaceListing

# Time allowed past the code's own timeout: killing and restarting an interpreter, draining
# output, a loaded host.
DEFAULT_MARGIN_S = 10.0
CONTROL_TIMEOUT_S = 10.0
CONTROL_BUDGET_BYTES = 64 * 1024
RECV_CHUNK = 65536
# JSON escaping makes one byte of output at most 6 characters ("\u00XX").
_JSON_EXPANSION = 6
# Room for a frame's own fields (id, type, flags, duration) around its data.
_FRAME_OVERHEAD = 256
FILE_TIMEOUT_S = 60.0
# A download streams the whole file in frames: bounded, so that a hijacked agent cannot fill
# the host's disk (workspaces are tmpfs of a few hundred MB; base64 adds a third).
FILE_READ_BUDGET_BYTES = 2 * 1024 * 1024 * 1024
# Rich outputs (8 MiB encoded), changed files (256 KiB encoded) and the rest of a result frame.
RICH_FRAME_BYTES = 8 * 1024 * 1024 + 512 * 1024
# A listing frame: the agent keeps its entries within 4 MiB encoded.
LISTING_MAX_FRAME = 4 * 1024 * 1024 + 64 * 1024
# The agent's refusals of a file operation, as the project's errors (the sandbox is fine).
_FILE_ERRORS: dict[str, type[SandboxServiceError]] = {
    "path_refused": FilePathRefusedError,
    "not_found": WorkspaceFileNotFoundError,
    "too_large": FileTooLargeError,
    "workspace_full": WorkspaceFullError,
}


class AgentProtocolError(SandboxGoneError):
    """The agent answered something that is not a valid frame for the request in flight."""


class AgentUnansweredError(SandboxGoneError):
    """The connection closed before any answer to the request: it was never run.

    The agent only closes a connection without answering when it hands an idle connection over
    to another host process, or when it is gone altogether; in both cases sending the request
    again on a new connection is safe (it fails to connect if the agent is gone).
    """


class AgentClient:
    """One connection to one agent; one request at a time (calls are serialized by a lock).

    ``ping``, ``execute`` and ``reseed`` raise SandboxGoneError on end of file, a reset, a
    malformed answer or no answer in time; the connection is closed then and the client is
    ``closed`` for good (the owner opens a new one if the sandbox is still there).
    """

    def __init__(self, sock: socket.socket, margin_s: float = DEFAULT_MARGIN_S) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._margin_s = margin_s
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def connect_unix(
        cls, path: str, timeout_s: float = 5.0, margin_s: float = DEFAULT_MARGIN_S
    ) -> AgentClient:
        """Connect to an agent's Unix socket; OSError when nothing listens there (yet)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return cls(sock, margin_s)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def ping(self, timeout_s: float = CONTROL_TIMEOUT_S) -> str:
        """The agent's version."""
        frame = self._call({"op": "ping"}, timeout_s, expect="pong")
        version: str = _field(frame, "version", str)
        return version

    def reseed(
        self, entropy: bytes, timeout_s: float = CONTROL_TIMEOUT_S, now: float | None = None
    ) -> bool:
        """Mix ``entropy`` into the guest's kernel pool and interpreters; True when credited.

        ``now`` (host Unix time) also sets the guest's clock where the agent may.
        """
        request: dict[str, Any] = {
            "op": "reseed",
            "entropy": base64.b64encode(entropy).decode("ascii"),
        }
        if now is not None:
            request["now"] = now
        frame = self._call(request, timeout_s, expect="reseeded")
        ok: bool = _field(frame, "ok", bool)
        return ok

    def execute(
        self,
        request: ExecutionRequest,
        max_output_bytes: int,
        on_output: Callable[[OutputChunk], None] | None = None,
    ) -> ExecutionResult:
        frame = self._call(
            {
                "op": "execute",
                "language": request.language.value,
                "code": request.code,
                "timeout_s": request.timeout_s,
                "max_output_bytes": max_output_bytes,
                "stream": on_output is not None,
            },
            request.timeout_s + self._margin_s,
            expect="result",
            on_output=on_output,
            # Rich outputs and changed files are capped by the agent as encoded; streamed, the
            # displays come once more in frames of their own.
            max_frame=_result_frame_bytes(max_output_bytes) + RICH_FRAME_BYTES,
            budget=execute_budget_bytes(max_output_bytes, stream=on_output is not None)
            + 2 * RICH_FRAME_BYTES,
        )
        exit_code = frame.get("exit_code")
        if exit_code is not None and (
            not isinstance(exit_code, int) or isinstance(exit_code, bool)
        ):
            raise AgentProtocolError("agent sent a non-integer exit_code")
        duration = frame.get("duration_s")
        if not isinstance(duration, int | float) or isinstance(duration, bool):
            raise AgentProtocolError("agent sent no duration_s")
        return ExecutionResult(
            stdout=_field(frame, "stdout", str),
            stderr=_field(frame, "stderr", str),
            exit_code=exit_code,
            duration_s=float(duration),
            timed_out=_field(frame, "timed_out", bool),
            stdout_truncated=_field(frame, "stdout_truncated", bool),
            stderr_truncated=_field(frame, "stderr_truncated", bool),
            state_lost=_field(frame, "state_lost", bool),
            outputs=tuple(_rich_output(item) for item in frame.get("outputs") or ()),
            outputs_truncated=frame.get("outputs_truncated") is True,
            changed_files=tuple(_changed_file(item) for item in frame.get("changed_files") or ()),
            changed_files_truncated=frame.get("changed_files_truncated") is True,
        )

    # --- workspace files (frames described in the agent's docstring) ---------------------------

    def write_file(self, path: str, chunks: Iterable[bytes], max_bytes: int) -> StoredFile:
        """Write the chunks (each at most a few hundred KiB) to ``path``, atomically."""
        begun = self._file_call({"op": "file_write_begin", "path": path, "max_bytes": max_bytes})
        handle = _field(begun, "handle", str)
        try:
            for chunk in chunks:
                for start in range(0, len(chunk), FILE_CHUNK_BYTES):
                    piece = chunk[start : start + FILE_CHUNK_BYTES]
                    data = base64.b64encode(piece).decode("ascii")
                    self._file_call({"op": "file_write_chunk", "handle": handle, "data": data})
        except BaseException:
            if not self._closed:
                with contextlib.suppress(SandboxServiceError):
                    self._file_call({"op": "file_write_abort", "handle": handle})
            raise
        frame = self._file_call({"op": "file_write_end", "handle": handle})
        return _stored(frame)

    def read_file(self, path: str, sink: Callable[[bytes], object]) -> StoredFile:
        """Stream the file's content to ``sink`` chunk by chunk; its size and digest after."""

        def on_data(frame: dict[str, Any]) -> None:
            try:
                sink(base64.b64decode(_field(frame, "data", str), validate=True))
            except ValueError as exc:
                raise AgentProtocolError("agent sent invalid base64") from exc

        return _stored(
            self._file_call(
                {"op": "file_read", "path": path}, on_data=on_data, budget=FILE_READ_BUDGET_BYTES
            )
        )

    def list_files(self, prefix: str) -> WorkspaceListing:
        frame = self._file_call(
            {"op": "file_list", "prefix": prefix},
            max_frame=LISTING_MAX_FRAME,
            budget=LISTING_MAX_FRAME,
        )
        entries = []
        for item in _field(frame, "entries", list):
            if not isinstance(item, dict):
                raise AgentProtocolError("agent sent a malformed listing entry")
            mtime = item.get("mtime")
            if not isinstance(mtime, int | float) or isinstance(mtime, bool):
                raise AgentProtocolError("agent sent a listing entry without mtime")
            entries.append(
                WorkspaceEntry(
                    path=_field(item, "path", str),
                    size=_field(item, "size", int),
                    modified_at=datetime.fromtimestamp(mtime, tz=UTC),
                )
            )
        return WorkspaceListing(tuple(entries), _field(frame, "truncated", bool))

    def delete_file(self, path: str) -> None:
        self._file_call({"op": "file_delete", "path": path})

    def _file_call(
        self,
        request: dict[str, Any],
        on_data: Callable[[dict[str, Any]], None] | None = None,
        max_frame: int = 1024 * 1024,
        budget: int = 1024 * 1024,
    ) -> dict[str, Any]:
        frame = self._call(
            request,
            FILE_TIMEOUT_S,
            expect="file_ok",
            max_frame=max_frame,
            budget=budget,
            on_data=on_data,
        )
        error = frame.get("error")
        if error is not None:
            kind = _FILE_ERRORS.get(error) if isinstance(error, str) else None
            if kind is None:
                raise AgentProtocolError(f"agent sent an unknown file error {error!r}")
            message = frame.get("message")
            raise kind(message if isinstance(message, str) else error)
        return frame

    def _call(
        self,
        request: dict[str, Any],
        timeout_s: float,
        expect: str,
        on_output: Callable[[OutputChunk], None] | None = None,
        max_frame: int = CONTROL_BUDGET_BYTES,
        budget: int = CONTROL_BUDGET_BYTES,
        on_data: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise SandboxGoneError("the agent connection is closed")
            request_id = next(self._ids)
            frames_seen = [0]
            exchange = _Exchange(time.monotonic() + timeout_s, budget, max_frame)
            try:
                self._sock.settimeout(timeout_s)
                self._sock.sendall((json.dumps({"id": request_id, **request}) + "\n").encode())
                return self._answer(request_id, expect, on_output, exchange, frames_seen, on_data)
            except (SandboxGoneError, _ClosedError, OSError) as exc:
                self.close()
                gone = _as_gone(exc, answered=frames_seen[0] > 0, timeout_s=timeout_s)
                if gone is exc:
                    raise
                raise gone from exc

    def _answer(
        self,
        request_id: int,
        expect: str,
        on_output: Callable[[OutputChunk], None] | None,
        exchange: _Exchange,
        frames_seen: list[int],
        on_data: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        while True:
            frame = self._read_frame(request_id, exchange)
            frames_seen[0] += 1
            kind = frame.get("type")
            if kind == expect:
                return frame
            if kind == "file_data" and on_data is not None:
                on_data(frame)
                continue
            if kind == "display":
                if on_output is not None:
                    item = _rich_output(frame)
                    on_output(OutputChunk(OutputStream.DISPLAY, json.dumps(asdict(item))))
                continue
            if kind == "output":
                if on_output is not None:
                    stream = _field(frame, "stream", str)
                    if stream not in ("stdout", "stderr"):  # display comes as its own frame
                        raise AgentProtocolError(f"unknown output stream {stream!r}")
                    on_output(OutputChunk(OutputStream(stream), _field(frame, "data", str)))
                continue
            if kind == "error":
                # Our own requests are well-formed: an error frame means a broken agent.
                raise AgentProtocolError(
                    f"agent error {frame.get('code')!r}: {frame.get('message')!r}"
                )
            raise AgentProtocolError(f"unexpected frame type {kind!r}")

    def _read_frame(self, request_id: int, exchange: _Exchange) -> dict[str, Any]:
        line = self._read_line(exchange)
        try:
            frame = json.loads(line)
        except ValueError as exc:
            raise AgentProtocolError("agent sent invalid JSON") from exc
        if not isinstance(frame, dict) or frame.get("id") != request_id:
            raise AgentProtocolError("agent frame for another request")
        return frame

    def _read_line(self, exchange: _Exchange) -> bytes:
        searched = 0
        while True:
            newline = self._buffer.find(b"\n", searched)
            if newline >= 0:
                line = bytes(self._buffer[: newline + 1])
                del self._buffer[: newline + 1]
                return line
            searched = len(self._buffer)
            if searched > exchange.max_frame:
                raise AgentProtocolError("agent frame too large")
            remaining = exchange.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request deadline passed")
            self._sock.settimeout(remaining)
            data = self._sock.recv(RECV_CHUNK)
            if not data:
                raise _ClosedError("the agent closed the connection")
            exchange.budget -= len(data)
            if exchange.budget < 0:
                raise AgentProtocolError("agent sent more than the request's byte budget")
            self._buffer += data


class _Exchange:
    """The limits of one request: a total deadline (monotonic) and bytes the agent may send."""

    def __init__(self, deadline: float, budget: int, max_frame: int) -> None:
        self.deadline = deadline
        self.budget = budget
        self.max_frame = max_frame


def _result_frame_bytes(max_output_bytes: int) -> int:
    # Each of stdout and stderr is at most max_output_bytes of UTF-8.
    return 2 * _JSON_EXPANSION * max_output_bytes + 64 * 1024


def execute_budget_bytes(max_output_bytes: int, stream: bool) -> int:
    """Everything an honest agent can send for one execution: the result frame, and with
    ``stream`` the same output again in output frames, at worst one kept byte per frame."""
    budget = _result_frame_bytes(max_output_bytes)
    if stream:
        budget += 2 * max_output_bytes * (_JSON_EXPANSION + _FRAME_OVERHEAD)
    return budget


class _ClosedError(Exception):
    """End of file on the connection."""


def _as_gone(exc: Exception, answered: bool, timeout_s: float) -> SandboxGoneError:
    """The domain error for a failed exchange; unanswered closes are safe to resend."""
    if isinstance(exc, SandboxGoneError):
        return exc
    if isinstance(exc, TimeoutError):
        return SandboxGoneError(f"the agent did not answer within {timeout_s:g} s")
    closed = isinstance(exc, _ClosedError | ConnectionError)
    if closed and not answered:
        return AgentUnansweredError(f"the agent connection closed before an answer: {exc}")
    return SandboxGoneError(f"the agent connection failed: {exc}")


def _changed_file(item: object) -> ChangedFile:
    if not isinstance(item, dict):
        raise AgentProtocolError("agent sent a malformed changed file")
    size = _field(item, "size", int)
    return ChangedFile(_field(item, "path", str), size)


def _rich_output(item: object) -> RichOutput:
    if not isinstance(item, dict):
        raise AgentProtocolError("agent sent a malformed rich output")
    encoding = _field(item, "encoding", str)
    if encoding not in ("utf-8", "base64"):
        raise AgentProtocolError(f"agent sent an unknown encoding {encoding!r}")
    return RichOutput(_field(item, "mime_type", str), _field(item, "data", str), encoding)


def _stored(frame: dict[str, Any]) -> StoredFile:
    size = _field(frame, "size", int)
    if isinstance(size, bool) or size < 0:
        raise AgentProtocolError("agent sent a bad size")
    return StoredFile(_field(frame, "path", str), size, _field(frame, "sha256", str))


def _field(frame: dict[str, Any], name: str, kind: type) -> Any:
    value = frame.get(name)
    if not isinstance(value, kind):
        raise AgentProtocolError(f"agent frame field {name!r} is not {kind.__name__}")
    return value
