"""Fixtures for the QEMU runtime's own tests: the built image set (shared, cached across runs
in the service's data directory) and runtimes whose VMs and snapshots live in test directories.
Every VM a test starts is stopped at teardown, found by the runtime's own instance id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.runtime import QemuSandboxRuntime
from testkit.fakes import FakeLogger
from testkit.qemu import RuntimeFactory, ensure_qemu_images
from testkit.service import ServiceProcess

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="session")
def qemu_image_dir() -> Path:
    return ensure_qemu_images()


def _stop_all(runtime: QemuSandboxRuntime) -> None:
    for item in runtime.list_managed():
        runtime.stop(item.container_id)
    runtime.close()


@pytest.fixture(scope="session")
def shared_qemu_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory for tests that only need some valid snapshot (built once per session)."""
    return tmp_path_factory.mktemp("qemu-shared")


@pytest.fixture
def make_runtime(
    qemu_image_dir: Path, tmp_path: Path, shared_qemu_data_dir: Path
) -> Iterator[RuntimeFactory]:
    """Runtimes with a unique instance id; their data directory (VMs, snapshots) is the test's
    own unless ``shared=True`` (the session's, with its snapshot) or given."""
    made: list[QemuSandboxRuntime] = []

    def make(
        data_dir: Path | None = None,
        instance_id: str | None = None,
        shared: bool = False,
        **options: object,
    ) -> tuple[QemuSandboxRuntime, FakeLogger]:
        logger = FakeLogger()
        config = QemuSandboxConfig(
            data_dir=data_dir or (shared_qemu_data_dir if shared else tmp_path / "data"),
            instance_id=instance_id or f"test-{uuid4().hex[:8]}",
            image_dir=qemu_image_dir,
            **options,  # type: ignore[arg-type]
        )
        runtime = QemuSandboxRuntime(config, logger)
        made.append(runtime)
        return runtime, logger

    yield make
    for runtime in made:
        _stop_all(runtime)


@pytest.fixture
def qemu_service(
    tmp_path_factory: pytest.TempPathFactory, qemu_image_dir: Path
) -> Iterator[ServiceProcess]:
    """``sandboxd serve`` with SANDBOXD_RUNTIME=qemu and otherwise default settings (none of the
    caller's SANDBOXD_* variables), on the shared image set."""
    service = ServiceProcess(
        tmp_path_factory.mktemp("sandboxd-qemu-e2e"),
        runtime="qemu",
        qemu_image_dir=qemu_image_dir,
        ttl_seconds="600",
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()
        service.remove_sandboxes()
