"""A real S3 endpoint on loopback: moto's server mode, one per test session."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import boto3
import pytest
from moto.server import ThreadedMotoServer

from adapter.s3.artifact_store import S3ArtifactConfig, S3ArtifactStore
from testkit.fakes import FakeLogger
from testkit.s3 import CREDENTIALS, free_port


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
def logger() -> FakeLogger:
    return FakeLogger()


@pytest.fixture
def store(s3_endpoint: str, bucket: str, logger: FakeLogger) -> Iterator[S3ArtifactStore]:
    made = S3ArtifactStore(
        S3ArtifactConfig(bucket=bucket, endpoint_url=s3_endpoint, **CREDENTIALS), logger
    )
    try:
        yield made
    finally:
        made.close()
