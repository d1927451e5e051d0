"""A real S3 endpoint on loopback: moto's server mode, one per test session."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from uuid import uuid4

import boto3
import pytest
from moto.server import ThreadedMotoServer

from adapter.s3.artifact_store import S3ArtifactConfig, S3ArtifactStore

CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}


class RecordingLogger:
    """Keeps (level, event, attrs) so tests can check the one event per outcome."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, object]]] = []

    def _record(self, level: str, message: str, attrs: Mapping[str, object] | None) -> None:
        self.events.append((level, message, dict(attrs or {})))

    def debug(self, message: str, attrs: Mapping[str, object] | None = None) -> None:
        self._record("debug", message, attrs)

    def info(self, message: str, attrs: Mapping[str, object] | None = None) -> None:
        self._record("info", message, attrs)

    def warning(self, message: str, attrs: Mapping[str, object] | None = None) -> None:
        self._record("warning", message, attrs)

    def error(self, message: str, attrs: Mapping[str, object] | None = None) -> None:
        self._record("error", message, attrs)

    def names(self) -> list[str]:
        return [event for _level, event, _attrs in self.events]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"sandboxd-test-{uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture
def logger() -> RecordingLogger:
    return RecordingLogger()


@pytest.fixture
def store(s3_endpoint: str, bucket: str, logger: RecordingLogger) -> Iterator[S3ArtifactStore]:
    made = S3ArtifactStore(
        S3ArtifactConfig(bucket=bucket, endpoint_url=s3_endpoint, **CREDENTIALS), logger
    )
    try:
        yield made
    finally:
        made.close()
