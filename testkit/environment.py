"""Environment test support: Docker environment stores under a test's own image repository,
and sandboxes started from an environment's image."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import docker

from adapter.docker.runtime import DockerSandboxConfig, DockerSandboxRuntime
from adapter.environment.docker_images import LABEL_BUILDER
from adapter.environment.docker_store import DockerEnvironmentStore
from adapter.environment.host_fetch import HostFetchConfig
from adapter.logging import ServiceLogger
from testkit.runtime import Sandbox, create_sandbox, remove_instance_containers, short_temp_dir

SERVICE_VERSION = "0.1.0"

# A pip that cannot run: a store that would build fails loudly instead of passing quietly.
NO_PIP = HostFetchConfig(pip_command=("/nonexistent/pip",), npm_command=("/nonexistent/npm",))

# make_store(logger=None, fetch=None, **config overrides) -> a store of the test's repository
StoreFactory = Callable[..., DockerEnvironmentStore]


class CountingObserver:
    """An EnvironmentCacheObserver that counts: which level answered, builds, downloads."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.builds = 0
        self.downloads = 0

    def cache_hit(self, level: str) -> None:
        self.hits.append(level)

    def built(self, seconds: float) -> None:
        self.builds += 1

    def downloaded(self, seconds: float) -> None:
        self.downloads += 1


def build_containers(client: docker.APIClient, tag: str) -> list[dict[str, Any]]:
    """Build (and export) containers of one environment image, ``<repository>:<key>``."""
    return client.containers(all=True, filters={"label": f"{LABEL_BUILDER}={tag}"})


@contextmanager
def sandbox_from(client: docker.APIClient, image: str) -> Iterator[Sandbox]:
    instance_id = f"test-{uuid4().hex[:12]}"
    data_dir = short_temp_dir("sbxe-")
    runtime = DockerSandboxRuntime(
        client,
        DockerSandboxConfig(image=image, instance_id=instance_id, data_dir=data_dir),
        ServiceLogger("test-environment"),
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
