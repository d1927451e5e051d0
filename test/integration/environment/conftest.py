"""A DockerEnvironmentStore over the real base sandbox image, with its own image repository so
that nothing here touches another run's environments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import docker
import pytest

from adapter.clock import SystemClock
from adapter.docker.image import ensure_docker_image
from adapter.environment.docker_images import DockerEnvironmentConfig
from adapter.environment.docker_store import DockerEnvironmentStore
from adapter.environment.host_fetch import HostFetchConfig
from testkit.environment import SERVICE_VERSION, StoreFactory
from testkit.fakes import FakeLogger
from testkit.runtime import docker_client, image_data_dir


@pytest.fixture(scope="session")
def client() -> docker.APIClient:
    return docker_client()


@pytest.fixture(scope="session")
def base_image(client: docker.APIClient) -> str:
    return ensure_docker_image(client, image_data_dir())


@pytest.fixture
def make_store(client: docker.APIClient, base_image: str, tmp_path: Path) -> Iterator[StoreFactory]:
    """Stores of one test share a repository (``sandboxd-env-test-<hex>``), removed afterwards."""
    repository = f"sandboxd-env-test-{uuid4().hex[:10]}"

    def make(
        logger: FakeLogger | None = None, fetch: HostFetchConfig | None = None, **overrides
    ) -> DockerEnvironmentStore:
        config = DockerEnvironmentConfig(
            base_image=base_image,
            data_dir=tmp_path / "data",
            service_version=SERVICE_VERSION,
            repository=repository,
            fetch=fetch or HostFetchConfig(),
            **overrides,
        )
        return DockerEnvironmentStore(client, config, SystemClock(), logger or FakeLogger())

    yield make
    for image in client.images(name=repository):
        for tag in image.get("RepoTags") or []:
            client.remove_image(tag, force=True)
