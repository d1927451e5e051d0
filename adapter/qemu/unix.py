"""Unix socket helpers."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def connect_unix(path: Path, timeout_s: float) -> socket.socket:
    """Connect to a Unix socket whose path may be longer than sun_path allows."""
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(f"/proc/self/fd/{directory}/{path.name}")
    except OSError:
        sock.close()
        raise
    finally:
        os.close(directory)
    return sock
