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
from collections.abc import Callable
from typing import Any

from domain.errors import SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult, OutputChunk, OutputStream

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
            max_frame=_result_frame_bytes(max_output_bytes),
            budget=execute_budget_bytes(max_output_bytes, stream=on_output is not None),
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
        )

    def _call(
        self,
        request: dict[str, Any],
        timeout_s: float,
        expect: str,
        on_output: Callable[[OutputChunk], None] | None = None,
        max_frame: int = CONTROL_BUDGET_BYTES,
        budget: int = CONTROL_BUDGET_BYTES,
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
                return self._answer(request_id, expect, on_output, exchange, frames_seen)
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
    ) -> dict[str, Any]:
        while True:
            frame = self._read_frame(request_id, exchange)
            frames_seen[0] += 1
            kind = frame.get("type")
            if kind == expect:
                return frame
            if kind == "output":
                if on_output is not None:
                    stream = _field(frame, "stream", str)
                    if stream not in ("stdout", "stderr"):
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


def _field(frame: dict[str, Any], name: str, kind: type) -> Any:
    value = frame.get(name)
    if not isinstance(value, kind):
        raise AgentProtocolError(f"agent frame field {name!r} is not {kind.__name__}")
    return value
