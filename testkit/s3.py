"""S3 test support: moto's server mode on a loopback port is a real S3 HTTP endpoint."""

from __future__ import annotations

import socket
from typing import Any

from adapter.s3.artifact_store import S3ArtifactConfig, S3ArtifactStore
from usecase.ports import Logger

# moto accepts any credentials; aioboto3 insists on having some.
CREDENTIALS: dict[str, Any] = {"access_key_id": "testing", "secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quick_failing_store(endpoint: str, bucket: str, logger: Logger) -> S3ArtifactStore:
    """A store that gives up fast (1 s to connect, one attempt): a dead endpoint costs little."""
    return S3ArtifactStore(
        S3ArtifactConfig(
            bucket=bucket,
            endpoint_url=endpoint,
            connect_timeout_s=1.0,
            max_attempts=1,
            **CREDENTIALS,
        ),
        logger,
    )
