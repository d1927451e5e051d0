"""A DockerEnvironmentStore over the real base sandbox image, with its own image repository so
that nothing here touches another run's environments."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from uuid import uuid4

import docker
import pytest

from adapter.clock import SystemClock
from adapter.docker.image import ensure_docker_image
from adapter.docker.runtime import DockerSandboxConfig, DockerSandboxRuntime
from adapter.environment.docker_store import (
    LABEL_BUILDER,
    DockerEnvironmentConfig,
    DockerEnvironmentStore,
)
from adapter.environment.host_fetch import HostFetchConfig
from adapter.logging import StructlogLogger
from test.integration.runtime.conftest import Sandbox, create_sandbox
from test.integration.runtime.factories import (
    docker_client,
    image_data_dir,
    remove_instance_containers,
    short_temp_dir,
)

SERVICE_VERSION = "0.1.0"


class RecordingLogger:
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


@pytest.fixture(scope="session")
def client() -> docker.APIClient:
    return docker_client()


@pytest.fixture(scope="session")
def base_image(client: docker.APIClient) -> str:
    return ensure_docker_image(client, image_data_dir())


StoreFactory = Callable[..., DockerEnvironmentStore]


@pytest.fixture
def make_store(client: docker.APIClient, base_image: str, tmp_path: Path) -> Iterator[StoreFactory]:
    """Stores of one test share a repository (``sandboxd-env-test-<hex>``), removed afterwards."""
    repository = f"sandboxd-env-test-{uuid4().hex[:10]}"

    def make(
        logger: RecordingLogger | None = None, fetch: HostFetchConfig | None = None, **overrides
    ) -> DockerEnvironmentStore:
        config = DockerEnvironmentConfig(
            base_image=base_image,
            data_dir=tmp_path / "data",
            service_version=SERVICE_VERSION,
            repository=repository,
            fetch=fetch or HostFetchConfig(),
            **overrides,
        )
        return DockerEnvironmentStore(client, config, SystemClock(), logger or RecordingLogger())

    yield make
    for image in client.images(name=repository):
        for tag in image.get("RepoTags") or []:
            client.remove_image(tag, force=True)


def build_containers(client: docker.APIClient, key: str) -> list[dict]:
    return client.containers(all=True, filters={"label": f"{LABEL_BUILDER}={key}"})


@contextmanager
def sandbox_from(client: docker.APIClient, image: str) -> Iterator[Sandbox]:
    instance_id = f"test-{uuid4().hex[:12]}"
    data_dir = short_temp_dir("sbxe-")
    runtime = DockerSandboxRuntime(
        client,
        DockerSandboxConfig(image=image, instance_id=instance_id, data_dir=data_dir),
        StructlogLogger("test-environment"),
    )
    try:
        yield create_sandbox(runtime)
    finally:
        remove_instance_containers(instance_id)
        runtime.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", tag], capture_output=True, check=False
        ).returncode
        == 0
    )
