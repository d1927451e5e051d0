"""Host side of the guest agent protocol (see adapter/agent/guest/sandbox_agent.py): its commands.

Used by every runtime: the Docker channel and the QEMU chardev are both Unix sockets on the host.
Framing and transport (caps, deadlines, byte budgets, data frames) are AgentConnection's; here
each command's request, what it may receive, and the checks of its answer. The guest is
untrusted: anything that is not a valid answer to the request in flight is treated like a dead
agent. Every request has a total deadline (an execution: its timeout plus a margin) and a byte
budget for everything the agent sends back, so a wedged or hijacked agent that trickles bytes or
streams frames for ever cannot hold the caller (a chat lock, a worker thread, a lock connection)
past that deadline.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, cast

from adapter.agent.connection import (
    DATA_FRAME_MAX,
    AgentConnection,
    AgentProtocolError,
    AgentUnansweredError,
    Exchange,
)
from domain.errors import (
    FilePathRefusedError,
    FileTooLargeError,
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
from domain.files import StoredFile, WorkspaceEntry, WorkspaceListing

__all__ = ["AgentClient", "AgentProtocolError", "AgentUnansweredError"]

# Time allowed past the code's own timeout: killing and restarting an interpreter, draining
# output, a loaded host.
DEFAULT_MARGIN_S = 10.0
CONTROL_TIMEOUT_S = 10.0
CONTROL_BUDGET_BYTES = 64 * 1024
# JSON escaping makes one byte of output at most 6 characters ("\u00XX").
_JSON_EXPANSION = 6
# Room for a frame's own fields (id, type, flags, duration) around its data.
_FRAME_OVERHEAD = 256
FILE_TIMEOUT_S = 60.0
# An upload may take longer than FILE_TIMEOUT_S when it is large: this much per second at least.
FILE_MIN_BYTES_PER_S = 10 * 1024 * 1024
# A download streams the whole file in data frames: bounded, so that a hijacked agent cannot
# fill the host's disk (workspaces are tmpfs of a few hundred MB).
FILE_READ_BUDGET_BYTES = 2 * 1024 * 1024 * 1024
FILE_ANSWER_BYTES = 64 * 1024
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


class AgentClient:
    """The agent's commands over one connection; one request at a time.

    Every command raises SandboxGoneError on end of file, a reset, a malformed answer or no
    answer in time; the connection is closed then and the client is ``closed`` for good (the
    owner opens a new one if the sandbox is still there). File commands raise the project's
    file errors for the agent's refusals; the sandbox is fine then.
    """

    def __init__(self, sock: socket.socket, margin_s: float = DEFAULT_MARGIN_S) -> None:
        self._connection = AgentConnection(sock)
        self._margin_s = margin_s

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
        return self._connection.closed

    def close(self) -> None:
        self._connection.close()

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
            max_line=_result_frame_bytes(max_output_bytes) + RICH_FRAME_BYTES,
            budget=execute_budget_bytes(max_output_bytes, stream=on_output is not None)
            + 2 * RICH_FRAME_BYTES,
        )
        return _execution_result(frame)

    # --- workspace files (frames described in the agent's docstring) ---------------------------

    def write_file(self, path: str, chunks: Iterable[bytes], max_bytes: int) -> StoredFile:
        """Write the chunks to ``path``, atomically: the agent answers "ready", the content
        follows in data frames without waiting for answers, then the agent's verdict.

        If ``chunks`` fails midway the connection is closed (the agent drops the partial file).
        """
        timeout_s = FILE_TIMEOUT_S + max_bytes / FILE_MIN_BYTES_PER_S
        request = {"op": "file_write", "path": path, "max_bytes": max_bytes}
        with self._connection.exchange(
            request, timeout_s, FILE_ANSWER_BYTES, 2 * FILE_ANSWER_BYTES
        ) as ex:
            self._file_answer(ex, final=False)  # ready, or the refusal of the path
            for chunk in chunks:
                view = memoryview(chunk)
                for start in range(0, len(view), DATA_FRAME_MAX):
                    self._connection.send_data(ex, view[start : start + DATA_FRAME_MAX])
            self._connection.send_data(ex, b"")
            return _stored(self._file_answer(ex))

    def read_file(self, path: str, sink: Callable[[bytes], object]) -> StoredFile:
        """Stream the file's content to ``sink`` chunk by chunk; its size and digest after
        (the size as counted here: the agent's claim must match it)."""
        request = {"op": "file_read", "path": path}
        received = 0
        with self._connection.exchange(
            request, FILE_TIMEOUT_S, FILE_ANSWER_BYTES, FILE_READ_BUDGET_BYTES, accepts_data=True
        ) as ex:
            while isinstance(frame := self._connection.read_frame(ex), bytearray):
                received += len(frame)
                # A fresh buffer per frame, never reused: as good as bytes to any sink.
                sink(cast(bytes, frame))
            stored = _stored(self._checked_file_answer(ex, frame))
            if stored.size != received:
                raise AgentProtocolError(f"agent claimed {stored.size} bytes and sent {received}")
            return stored

    def list_files(self, prefix: str) -> WorkspaceListing:
        frame = self._file_call({"op": "file_list", "prefix": prefix}, max_line=LISTING_MAX_FRAME)
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

    # --- answers ---------------------------------------------------------------------------------

    def _file_call(
        self, request: dict[str, Any], max_line: int = FILE_ANSWER_BYTES
    ) -> dict[str, Any]:
        with self._connection.exchange(request, FILE_TIMEOUT_S, max_line, max_line) as ex:
            return self._file_answer(ex)

    def _file_answer(self, ex: Exchange, final: bool = True) -> dict[str, Any]:
        return self._checked_file_answer(ex, self._connection.read_frame(ex), final)

    @staticmethod
    def _checked_file_answer(
        ex: Exchange, frame: dict[str, Any] | bytearray, final: bool = True
    ) -> dict[str, Any]:
        """A file_ok frame without an error; the agent's refusal as the project's error (a
        refusal always ends the exchange)."""
        if isinstance(frame, bytearray) or frame.get("type") != "file_ok":
            kind = "data" if isinstance(frame, bytearray) else frame.get("type")
            raise AgentProtocolError(f"unexpected frame type {kind!r}")
        error = frame.get("error")
        if error is None:
            ex.settled = final
            return frame
        refusal = _FILE_ERRORS.get(error) if isinstance(error, str) else None
        if refusal is None:
            raise AgentProtocolError(f"agent sent an unknown file error {error!r}")
        message = frame.get("message")
        ex.settled = True
        raise refusal(message if isinstance(message, str) else error)

    def _call(
        self,
        request: dict[str, Any],
        timeout_s: float,
        expect: str,
        on_output: Callable[[OutputChunk], None] | None = None,
        max_line: int = CONTROL_BUDGET_BYTES,
        budget: int = CONTROL_BUDGET_BYTES,
    ) -> dict[str, Any]:
        """Send a request and read frames up to the one of type ``expect``: streamed output
        and displays go to ``on_output``, anything else is a broken agent."""
        with self._connection.exchange(request, timeout_s, max_line, budget) as ex:
            while True:
                frame = self._connection.read_frame(ex)
                assert isinstance(frame, dict)  # data frames are refused for this exchange
                kind = frame.get("type")
                if kind == expect:
                    return frame
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


def _execution_result(frame: dict[str, Any]) -> ExecutionResult:
    exit_code = frame.get("exit_code")
    if exit_code is not None and (not isinstance(exit_code, int) or isinstance(exit_code, bool)):
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
