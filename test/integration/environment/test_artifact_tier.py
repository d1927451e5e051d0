"""L3 behind L2: two services with their own data directories and image repositories share one
bucket (a real S3 endpoint: moto's server on loopback); the second gets an environment from S3
without building it. S3 trouble never fails a request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import docker
import pytest
from dependency_injector import providers

from adapter.clock import SystemClock
from adapter.environment.docker_images import DockerEnvironmentConfig
from adapter.environment.docker_store import DockerEnvironmentStore
from adapter.environment.host_fetch import HostFetchConfig
from adapter.s3.artifact_store import S3ArtifactConfig, S3ArtifactStore
from domain.environment import ArtifactKind, Environment
from domain.execution import Language
from entrypoint.cli import main
from entrypoint.container import Container
from testkit.environment import NO_PIP, SERVICE_VERSION, CountingObserver, sandbox_from
from testkit.fakes import FakeLogger
from testkit.s3 import CREDENTIALS, free_port, quick_failing_store

TABULATE = Environment(Language.PYTHON, ("tabulate==0.9.0",))


@pytest.fixture
def service_factory(client: docker.APIClient, base_image: str, tmp_path: Path) -> Iterator[object]:
    repositories: list[str] = []
    artifact_stores: list[S3ArtifactStore] = []

    def make(
        name: str, endpoint: str, bucket_name: str, fetch: HostFetchConfig | None = None
    ) -> tuple[DockerEnvironmentStore, FakeLogger, CountingObserver]:
        repository = f"sandboxd-env-test-{uuid4().hex[:10]}"
        repositories.append(repository)
        logger, observer = FakeLogger(), CountingObserver()
        artifacts = quick_failing_store(endpoint, bucket_name, logger)
        artifact_stores.append(artifacts)
        store = DockerEnvironmentStore(
            client,
            DockerEnvironmentConfig(
                base_image=base_image,
                data_dir=tmp_path / name,
                service_version=SERVICE_VERSION,
                repository=repository,
                fetch=fetch or HostFetchConfig(),
            ),
            SystemClock(),
            logger,
            artifacts=artifacts,
            observer=observer,
        )
        return store, logger, observer

    yield make
    for artifacts in artifact_stores:
        artifacts.close()
    for repository in repositories:
        for image in client.images(name=repository):
            for tag in image.get("RepoTags") or []:
                client.remove_image(tag, force=True)


def test_a_second_service_gets_the_environment_from_s3_without_building(
    service_factory, s3_endpoint: str, bucket: str, client, capsys
) -> None:
    first, first_log, first_seen = service_factory("a", s3_endpoint, bucket)
    built = first.ensure(TABULATE)
    first.wait_for_uploads()
    assert first_seen.hits == ["miss"] and first_seen.builds == 1
    assert "environment_uploaded" in first_log.events()
    assert first.in_artifact_store(built.key) is True

    second, second_log, second_seen = service_factory("b", s3_endpoint, bucket, fetch=NO_PIP)
    cli = Container()
    cli.environment_store.override(providers.Object(second))
    assert main(["env", "list"], cli) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["key"], row["l2"], row["l3"]) for row in listed] == [(built.key, False, True)]

    loaded = second.ensure(TABULATE)
    assert loaded.key == built.key and loaded.reference != built.reference
    assert second_seen.hits == ["l3"] and second_seen.builds == 0
    assert "environment_built" not in second_log.events()
    assert "environment_downloaded" in second_log.events()
    with sandbox_from(client, loaded.reference) as sandbox:
        result = sandbox.run("import tabulate; print(tabulate.__version__)")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "0.9.0"
    assert second.artifact_keys() == [built.key]
    # Now local: the next request is an L2 hit.
    second.ensure(TABULATE)
    assert second_seen.hits == ["l3", "l2"]


def test_s3_down_builds_locally_and_the_upload_is_retried_later(
    service_factory, s3_endpoint: str, bucket: str
) -> None:
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    store, logger, seen = service_factory("c", dead_endpoint, bucket)
    built = store.ensure(TABULATE)  # S3 unreachable: no error for the caller
    store.wait_for_uploads()
    assert seen.hits == ["miss"]
    assert "environment_upload_failed" in logger.events()
    assert (store.config.root / "pending-upload" / built.key).exists()

    # The next sweep, with S3 back (same data directory and images, a working endpoint).
    healthy = DockerEnvironmentStore(
        store.images.client,
        store.config,
        SystemClock(),
        logger,
        artifacts=S3ArtifactStore(
            S3ArtifactConfig(bucket=bucket, endpoint_url=s3_endpoint, **CREDENTIALS), logger
        ),
    )
    assert healthy.retry_uploads() == 1
    assert healthy.in_artifact_store(built.key) is True
    assert healthy.retry_uploads() == 0
    assert ArtifactKind.IMAGE.object_key(built.key) == f"images/{built.key}.tar.zst"
