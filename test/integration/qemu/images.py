"""Build (or reuse) the QEMU image set the way ``sandboxd image build --runtime qemu`` does."""

from __future__ import annotations

from pathlib import Path

from adapter.image.rootfs import build_rootfs
from adapter.qemu.image import build_qemu_image
from entrypoint.settings import Settings


def ensure_qemu_images(data_dir: Path | None = None) -> Path:
    """The directory holding the image set; every step is skipped when up to date."""
    directory = data_dir or Settings().data_dir
    rootfs = build_rootfs(directory)
    build_qemu_image(directory, rootfs.path, rootfs.content_hash)
    return directory
