"""The host's end of one agent connection: framing and transport, no commands.

Frames (see adapter/agent/guest/sandbox_agent.py): JSON lines both ways, and binary data frames
for file content, a 13-byte header (the byte 0, the request id as uint64, the payload length as
uint32) and the raw payload. The guest is untrusted: a JSON line is capped per request, a data
frame at DATA_FRAME_MAX (checked from its header, before a byte of payload is read) and only
where the request expects one, every frame must carry the request's id, and all the agent sends
for one request counts against a byte budget and a total deadline. Anything else is treated
like a dead agent: the connection is closed and the caller gets SandboxGoneError.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from domain.errors import SandboxGoneError

DATA_MAGIC = 0
DATA_HEADER = struct.Struct(">BQI")
# The agent's DATA_FRAME_MAX: the largest payload either side sends in one data frame.
DATA_FRAME_MAX = 1024 * 1024
RECV_CHUNK = 256 * 1024


class AgentProtocolError(SandboxGoneError):
    """The agent answered something that is not a valid frame for the request in flight."""


class AgentUnansweredError(SandboxGoneError):
    """The connection closed before any answer to the request: it was never run.

    The agent only closes a connection without answering when it hands an idle connection over
    to another host process, or when it is gone altogether; in both cases sending the request
    again on a new connection is safe (it fails to connect if the agent is gone).
    """


class _ClosedError(Exception):
    """End of file on the connection."""


@dataclass
class Exchange:
    """One request in flight: its id, total deadline (monotonic), the bytes the agent may still
    send, the largest JSON line it may send, and whether data frames may come back. ``settled``:
    its last answer was read whole, so an exception raised on it (the agent's refusal) leaves
    the connection in step and open."""

    request_id: int
    deadline: float
    budget: int
    max_line: int
    accepts_data: bool
    frames_seen: int = field(default=0)
    settled: bool = field(default=False)


class AgentConnection:
    """One socket to one agent; one exchange at a time (serialized by a lock).

    After any failure inside an exchange the connection is closed for good (a stream cut in the
    middle of a frame cannot be trusted); the owner opens a new one if the sandbox is still there.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.close()

    @contextlib.contextmanager
    def exchange(
        self,
        request: dict[str, Any],
        timeout_s: float,
        max_line: int,
        budget: int,
        accepts_data: bool = False,
    ) -> Iterator[Exchange]:
        """Send ``request`` with a fresh id and yield the exchange to read its answer with.

        Any exception inside closes the connection, but for one raised after the exchange is
        ``settled``; transport failures come out as SandboxGoneError (AgentUnansweredError when
        nothing at all was answered).
        """
        with self._lock:
            if self._closed:
                raise SandboxGoneError("the agent connection is closed")
            request_id = next(self._ids)
            ex = Exchange(request_id, time.monotonic() + timeout_s, budget, max_line, accepts_data)
            try:
                self._sock.settimeout(timeout_s)
                self._sock.sendall((json.dumps({"id": request_id, **request}) + "\n").encode())
                yield ex
            except (SandboxGoneError, _ClosedError, OSError) as exc:
                self.close()
                gone = _as_gone(exc, answered=ex.frames_seen > 0, timeout_s=timeout_s)
                if gone is exc:
                    raise
                raise gone from exc
            except BaseException:
                if not ex.settled:
                    self.close()
                raise

    def read_frame(self, ex: Exchange) -> dict[str, Any] | bytearray:
        """The next frame of the exchange: a JSON object, or a data frame's payload."""
        self._fill(1, ex)
        if self._buffer[0] == DATA_MAGIC:
            payload = self._read_data(ex)
            ex.frames_seen += 1
            return payload
        line = self._read_line(ex)
        ex.frames_seen += 1
        try:
            frame = json.loads(line)
        except ValueError as exc:
            raise AgentProtocolError("agent sent invalid JSON") from exc
        if not isinstance(frame, dict) or frame.get("id") != ex.request_id:
            raise AgentProtocolError("agent frame for another request")
        return frame

    def send_data(self, ex: Exchange, data: bytes | memoryview) -> None:
        """One data frame of at most DATA_FRAME_MAX bytes (empty: the last of the request)."""
        if len(data) > DATA_FRAME_MAX:
            raise ValueError("a data frame holds at most DATA_FRAME_MAX bytes")
        self._sock.settimeout(max(ex.deadline - time.monotonic(), 0.001))
        self._sock.sendall(DATA_HEADER.pack(DATA_MAGIC, ex.request_id, len(data)))
        if data:
            self._sock.sendall(data)

    def _read_data(self, ex: Exchange) -> bytearray:
        self._fill(DATA_HEADER.size, ex)
        _magic, frame_id, length = DATA_HEADER.unpack_from(self._buffer)
        if not ex.accepts_data:
            raise AgentProtocolError("agent sent a data frame the request does not expect")
        if frame_id != ex.request_id:
            raise AgentProtocolError("agent data frame for another request")
        if length > DATA_FRAME_MAX:
            raise AgentProtocolError(f"agent data frame of {length} bytes is too large")
        del self._buffer[: DATA_HEADER.size]
        payload = bytearray(length)
        view = memoryview(payload)
        have = min(length, len(self._buffer))
        view[:have] = self._buffer[:have]
        del self._buffer[:have]
        while have < length:
            self._set_remaining(ex)
            got = self._sock.recv_into(view[have:])
            self._received(got, ex)
            have += got
        return payload

    def _read_line(self, ex: Exchange) -> bytes:
        searched = 0
        while True:
            newline = self._buffer.find(b"\n", searched)
            if newline >= 0:
                line = bytes(self._buffer[: newline + 1])
                del self._buffer[: newline + 1]
                return line
            searched = len(self._buffer)
            if searched > ex.max_line:
                raise AgentProtocolError("agent frame too large")
            self._recv_more(ex)

    def _fill(self, size: int, ex: Exchange) -> None:
        while len(self._buffer) < size:
            self._recv_more(ex)

    def _recv_more(self, ex: Exchange) -> None:
        self._set_remaining(ex)
        data = self._sock.recv(RECV_CHUNK)
        self._received(len(data), ex)
        self._buffer += data

    def _set_remaining(self, ex: Exchange) -> None:
        remaining = ex.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(remaining)

    def _received(self, count: int, ex: Exchange) -> None:
        if not count:
            raise _ClosedError("the agent closed the connection")
        ex.budget -= count
        if ex.budget < 0:
            raise AgentProtocolError("agent sent more than the request's byte budget")


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
