"""Fixtures several integration suites share: a real S3 endpoint on loopback (moto's server mode,
one per test session) and a fresh bucket per test."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import boto3
import pytest
from moto.server import ThreadedMotoServer

from testkit.s3 import free_port


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
