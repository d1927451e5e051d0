"""The S3 artifact store against the moto endpoint of test/integration/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapter.s3.artifact_store import S3ArtifactConfig, S3ArtifactStore
from testkit.fakes import FakeLogger
from testkit.s3 import CREDENTIALS


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
