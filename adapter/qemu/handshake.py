"""The first exchange with a starting VM's agent, before the connection goes to AgentClient."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time
from collections.abc import Callable

from domain.errors import RuntimeUnavailableError


def handshake(
    sock: socket.socket, check_starting: Callable[[], None], reseed: bool = False
) -> dict[str, object]:
    """Wait until the agent answers a ping, drain stale answers; the last answer.

    QEMU holds what we send until the guest opens its port, so one ping normally suffices; it is
    repeated now and then in case a guest driver dropped it. Pongs to earlier pings can arrive
    late, so a last request with a fresh id is answered before the connection is handed over to
    the AgentClient. With ``reseed`` that last request is the reseed a restored VM needs,
    carrying fresh entropy and the host's clock (the guest's clock stood still in the snapshot;
    an agent that predates the "now" field ignores it). ``check_starting`` raises
    RuntimeUnavailableError once QEMU has exited or the start deadline has passed.
    """
    try:
        reader = _LineReader(sock)
        attempt = 0
        ready = False
        while not ready:
            check_starting()
            attempt += 1
            sock.settimeout(5.0)
            sock.sendall(json.dumps({"id": f"ready-{attempt}", "op": "ping"}).encode() + b"\n")
            resend_at = time.monotonic() + 1.0
            while not ready and time.monotonic() < resend_at:
                check_starting()
                ready = any(frame.get("type") == "pong" for frame in reader.frames(0.1))
        sync_id = f"ready-sync-{secrets.token_hex(4)}"
        final: dict[str, object] = {"id": sync_id, "op": "ping"}
        if reseed:
            entropy = base64.b64encode(secrets.token_bytes(64)).decode("ascii")
            final = {"id": sync_id, "op": "reseed", "entropy": entropy, "now": time.time()}
        sock.settimeout(5.0)
        sock.sendall(json.dumps(final).encode() + b"\n")
        sync_deadline = time.monotonic() + 10.0
        while True:
            for frame in reader.frames(0.1):
                if frame.get("id") == sync_id:
                    sock.settimeout(None)
                    return frame
            check_starting()
            if time.monotonic() > sync_deadline:
                raise RuntimeUnavailableError("agent stopped answering during start")
    except OSError as exc:
        raise RuntimeUnavailableError(f"agent connection failed: {exc!r}") from exc


def resync(sock: socket.socket, timeout_s: float = 10.0) -> None:
    """Drain what requests of an earlier connection left in the VM's channel.

    QEMU gives the guest one byte stream whichever host connection is open: a request whose
    connection was dropped before its answer (a timeout on a frozen or starved VM, a handover)
    is still answered, on the next connection. So a new connection first sends a ping with a
    fresh id and drops every frame before its answer; the agent answers requests in order.
    Raises RuntimeUnavailableError when that answer does not come within ``timeout_s``.
    """
    sync_id = f"resync-{secrets.token_hex(4)}"
    try:
        reader = _LineReader(sock)
        sock.settimeout(5.0)
        sock.sendall(json.dumps({"id": sync_id, "op": "ping"}).encode() + b"\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(frame.get("id") == sync_id for frame in reader.frames(0.1)):
                sock.settimeout(None)
                return
    except OSError as exc:
        raise RuntimeUnavailableError(f"agent connection failed: {exc!r}") from exc
    raise RuntimeUnavailableError("agent did not answer on a new connection")


class _LineReader:
    """Newline-delimited JSON frames from a socket, with a bounded wait per call."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def frames(self, wait_s: float) -> list[dict[str, object]]:
        self._sock.settimeout(wait_s)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            return []
        if not chunk:
            raise RuntimeUnavailableError("agent connection closed")
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        frames: list[dict[str, object]] = []
        for line in lines:
            try:
                frame = json.loads(line)
            except ValueError:
                continue  # a frame cut in half while the port opened
            if isinstance(frame, dict):
                frames.append(frame)
        return frames
