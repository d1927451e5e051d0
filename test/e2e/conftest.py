"""End-to-end fixtures: the real service process, with either runtime (see testkit/service.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from adapter.docker.image import default_image_tag, ensure_docker_image
from testkit.private_dockerd import PrivateDockerd, private_dockerd
from testkit.service import ROOT, ServiceFactory, ServiceProcess


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


def _build_image(script: str, repository: str) -> str:
    """Run one of deploy/image's offline builders; --no-latest: a test must not move the tag an
    operator may be running. Returns the <hash12> tag it printed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "image" / script), "--no-latest"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    tag = done.stdout.strip().splitlines()[-1]
    assert tag.startswith(f"{repository}:")
    return tag


@pytest.fixture(scope="session")
def service_image() -> str:
    """The service's own image (deploy/image/build.py), built once for the session's tests."""
    return _build_image("build.py", "sandboxd-service")


@pytest.fixture(scope="session")
def postgres_image() -> str:
    """The offline PostgreSQL image compose.yaml uses (deploy/image/postgres.py)."""
    return _build_image("postgres.py", "sandboxd-postgres")


@pytest.fixture(scope="session")
def sandbox_image(docker_client: docker.DockerClient) -> str:
    """The sandbox image a service in a container will use (built on the host if needed)."""
    from entrypoint.settings import Settings

    return ensure_docker_image(docker_client.api, Settings().data_dir)
