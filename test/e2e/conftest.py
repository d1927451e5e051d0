"""End-to-end fixtures: the real service process, with either runtime (see testkit/service.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import docker
import pytest

from adapter.docker.image import default_image_tag
from testkit.private_dockerd import PrivateDockerd, private_dockerd
from testkit.service import ServiceFactory, ServiceProcess


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"the e2e tests need a running Docker engine: {exc}")
    yield client
    client.close()


def _service_factory(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[ServiceFactory]:
    started: list[ServiceProcess] = []

    def start(**settings: Any) -> ServiceProcess:
        service = ServiceProcess(tmp_path_factory.mktemp("sandboxd-e2e"), **settings)
        started.append(service)
        service.start()
        return service

    yield start
    for service in started:
        service.stop()
        service.remove_sandboxes(docker_client)


@pytest.fixture(scope="module")
def module_services(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[ServiceFactory]:
    """Services shared by a module's tests (start-up costs about a second each)."""
    yield from _service_factory(tmp_path_factory, docker_client)


@pytest.fixture
def services(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[ServiceFactory]:
    """Services for one test that restarts or reconfigures them."""
    yield from _service_factory(tmp_path_factory, docker_client)


@pytest.fixture(scope="session")
def private_engine(docker_client: docker.DockerClient) -> Iterator[PrivateDockerd]:
    """A Docker engine of the test session's own (testkit.private_dockerd), with the sandbox
    image copied in once from the system engine: fault tests stop and restart it, never the
    system engine other test runs share."""
    image = default_image_tag()
    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"the sandbox image {image} is not built (scripts/setup.sh image)")
    with private_dockerd(images=(image,)) as engine:
        yield engine
