"""S3 test support: moto's server mode on a loopback port is a real S3 HTTP endpoint."""

from __future__ import annotations

import socket
from typing import Any

# moto accepts any credentials; aioboto3 insists on having some.
CREDENTIALS: dict[str, Any] = {"access_key_id": "testing", "secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
