"""Attacks on the real service process (issue 11, items 5 and 6)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from testkit.service import ServiceFactory


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_an_unauthenticated_100_mb_chunked_upload_is_refused_early(
    module_services: ServiceFactory,
) -> None:
    service = module_services()
    assert service.process is not None
    before = _rss_bytes(service.process.pid)
    with socket.create_connection(("127.0.0.1", service.http_port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /v1/chats/{uuid.uuid4()}/executions HTTP/1.1\r\nHost: sandboxd\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        sock.sendall(_chunk(b'{"code": "' + b" " * 65536))
        # Far from the end of the body, the answer is already there.
        assert sock.recv(65536).startswith(b"HTTP/1.1 401")
        sent = 0
        with pytest.raises(OSError):
            while sent < 100 * 1024 * 1024:
                sock.sendall(_chunk(b" " * 65536))
                sent += 65536
            raise AssertionError("all 100 MB were accepted")
    assert _rss_bytes(service.process.pid) - before < 20 * 1024 * 1024


def test_the_service_refuses_to_start_under_the_sandbox_uid(
    services: ServiceFactory,
) -> None:
    with pytest.raises(RuntimeError, match="SANDBOXD_DOCKER_USER"):
        services(docker_user=f"{os.getuid()}:{os.getgid()}")
