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
from adapter.logging import StructlogLogger
from testkit.runtime import Sandbox, create_sandbox, remove_instance_containers, short_temp_dir

SERVICE_VERSION = "0.1.0"

# make_store(logger=None, fetch=None, **config overrides) -> a store of the test's repository
StoreFactory = Callable[..., DockerEnvironmentStore]


def build_containers(client: docker.APIClient, key: str) -> list[dict[str, Any]]:
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
