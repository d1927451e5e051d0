"""QEMU test support: the image set, built (or reused) the way ``sandboxd image build --runtime
qemu`` does, and the shape of the factory fixture that makes runtimes for a test."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from adapter.image.rootfs import build_rootfs
from adapter.qemu.image import build_qemu_image
from adapter.qemu.runtime import QemuSandboxRuntime
from domain.execution import ExecutionRequest
from domain.sandbox import SandboxSession
from entrypoint.settings import Settings
from testkit.fakes import FakeLogger

# make_runtime(data_dir=None, instance_id=None, shared=False, **options) -> (runtime, logger)
RuntimeFactory = Callable[..., tuple[QemuSandboxRuntime, FakeLogger]]


def ensure_qemu_images(data_dir: Path | None = None) -> Path:
    """The directory holding the image set; every step is skipped when up to date."""
    directory = data_dir or Settings().data_dir
    rootfs = build_rootfs(directory)
    build_qemu_image(directory, rootfs.path, rootfs.content_hash)
    return directory


def create_vm(runtime: QemuSandboxRuntime, environment_key: str | None = None) -> SandboxSession:
    """A VM for a fresh session and chat, valid for an hour (from an environment's disk when
    ``environment_key`` is given)."""
    now = datetime.now(UTC)
    return runtime.create(
        session_id=uuid4(),
        chat_id=uuid4(),
        created_at=now,
        expires_at=now + timedelta(hours=1),
        environment_key=environment_key,
    )


def run_ok(runtime: QemuSandboxRuntime, container_id: str, code: str, **kw: object) -> str:
    """stdout of code that must exit 0."""
    result = runtime.execute(container_id, ExecutionRequest(code=code, **kw))  # type: ignore[arg-type]
    assert result.exit_code == 0, result
    return result.stdout


def started_modes(logger: FakeLogger) -> list[object]:
    """How each VM the logger saw was started (cold, restored, ...), in order."""
    return [attrs["mode"] for attrs in logger.named("qemu_vm_started")]
