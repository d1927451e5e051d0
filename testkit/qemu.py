"""QEMU test support: the image set, built (or reused) the way ``sandboxd image build --runtime
qemu`` does, and the shape of the factory fixture that makes runtimes for a test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adapter.image.rootfs import build_rootfs
from adapter.qemu.image import build_qemu_image
from adapter.qemu.runtime import QemuSandboxRuntime
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
