"""Runtime factories for the conformance suite: name -> context manager yielding a runtime.

Each factory gives a runtime of its own service instance (a unique instance id) with
``max_output_bytes = CONFORMANCE_MAX_OUTPUT_BYTES``, and on exit removes every object of that
instance, whatever the tests left behind. Add a runtime here and the whole suite runs on it
(the parameter carries the pytest markers in ``MARKS``: docker, gvisor, qemu).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import docker
import pytest

from adapter.docker.image import ensure_docker_image
from adapter.docker.runtime import LABEL_INSTANCE, DockerSandboxConfig, DockerSandboxRuntime
from adapter.logging import ServiceLogger
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.runtime import QemuSandboxRuntime
from adapter.qemu.vm import VmDir
from domain.execution import ExecutionRequest, ExecutionResult, Language
from domain.sandbox import SandboxSession
from entrypoint.settings import Settings
from usecase.ports import OutputSink, SandboxRuntime

CONFORMANCE_MAX_OUTPUT_BYTES = 64 * 1024

RuntimeFactory = Callable[[], AbstractContextManager[SandboxRuntime]]


def image_data_dir() -> Path:
    """Where images are built and cached: the service's own data dir, so nothing is built twice."""
    return Settings().data_dir


def short_temp_dir(prefix: str) -> Path:
    # Agent sockets live in here and Unix socket paths are limited to 108 bytes.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def docker_client() -> docker.APIClient:
    try:
        client = docker.APIClient(version="auto", timeout=120)
        client.ping()
    except Exception as exc:
        pytest.fail(
            f"no Docker engine reachable ({exc}); scripts/test.sh installs and starts one "
            "(scripts/setup.sh docker)",
            pytrace=False,
        )
    return client


def remove_instance_containers(instance_id: str) -> None:
    """Remove by label with the CLI, independent of the runtime under test."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_INSTANCE}={instance_id}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


@contextmanager
def docker_runtime(**overrides: object) -> Iterator[DockerSandboxRuntime]:
    client = docker_client()
    image = ensure_docker_image(client, image_data_dir())
    instance_id = f"test-{uuid4().hex[:12]}"
    data_dir = short_temp_dir("sbxt-")
    config = DockerSandboxConfig(
        image=image,
        instance_id=instance_id,
        data_dir=data_dir,
        max_output_bytes=CONFORMANCE_MAX_OUTPUT_BYTES,
        **overrides,  # type: ignore[arg-type]
    )
    runtime = DockerSandboxRuntime(client, config, ServiceLogger("test-runtime"))
    try:
        yield runtime
    finally:
        remove_instance_containers(instance_id)
        runtime.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def qemu_runtime(**overrides: object) -> Iterator[QemuSandboxRuntime]:
    from testkit.qemu import ensure_qemu_images

    images = ensure_qemu_images(image_data_dir())
    data_dir = short_temp_dir("sbxq-")
    config = QemuSandboxConfig(
        data_dir=data_dir,
        instance_id=f"test-{uuid4().hex[:12]}",
        max_output_bytes=CONFORMANCE_MAX_OUTPUT_BYTES,
        image_dir=images,
        **overrides,  # type: ignore[arg-type]
    )
    runtime = QemuSandboxRuntime(config, ServiceLogger("test-qemu-runtime"))
    try:
        yield runtime
    finally:
        runtime.close()
        # Kill by the pidfiles in the VM work dirs, independent of the runtime under test.
        for vm_dir in (data_dir / "vms").glob("qvm-*"):
            VmDir(vm_dir).kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def registered_docker_runtimes() -> set[str]:
    return set(docker_client().info().get("Runtimes") or {})


@contextmanager
def docker_runsc_runtime(**overrides: object) -> Iterator[DockerSandboxRuntime]:
    """The Docker runtime under gVisor (runsc registered with dockerd by setup.sh gvisor)."""
    if "runsc" not in registered_docker_runtimes():
        pytest.fail(
            "the Docker engine has no runsc runtime; scripts/test.sh registers it "
            "(scripts/setup.sh gvisor)",
            pytrace=False,
        )
    with docker_runtime(runtime="runsc", **overrides) as runtime:
        yield runtime


FACTORIES: dict[str, RuntimeFactory] = {
    "docker": docker_runtime,
    "docker-runsc": docker_runsc_runtime,
    "qemu": qemu_runtime,
}
MARKS: dict[str, tuple[str, ...]] = {
    "docker": ("docker",),
    "docker-runsc": ("docker", "gvisor"),
    "qemu": ("qemu",),
}


# Fixed times: the runtime only records them.
CREATED_AT = datetime(2030, 1, 1, tzinfo=UTC)
EXPIRES_AT = CREATED_AT + timedelta(minutes=15)


@dataclass
class Sandbox:
    runtime: SandboxRuntime
    session: SandboxSession

    @property
    def id(self) -> str:
        return self.session.container_id

    def run(
        self,
        code: str,
        language: Language = Language.PYTHON,
        timeout_s: float = 20.0,
        on_output: OutputSink | None = None,
    ) -> ExecutionResult:
        return self.runtime.execute(self.id, ExecutionRequest(code, language, timeout_s), on_output)


def create_sandbox(runtime: SandboxRuntime) -> Sandbox:
    session = runtime.create(
        session_id=uuid4(), chat_id=uuid4(), created_at=CREATED_AT, expires_at=EXPIRES_AT
    )
    return Sandbox(runtime, session)
