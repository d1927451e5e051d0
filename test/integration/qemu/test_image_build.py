"""The QEMU image builder under concurrency: builders that start together publish one valid
base image (regression: two builders once shared a staging directory and published a qcow2
whose ext4 superblock was zeroed, so every VM failed with "cannot mount root")."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adapter.image.rootfs import build_rootfs
from adapter.qemu.image import build_qemu_image
from entrypoint.settings import Settings

pytestmark = pytest.mark.qemu


def _is_ext4(qcow2: Path, scratch: Path) -> bool:
    raw = scratch / "check.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
    try:
        probe = subprocess.run(
            ["dumpe2fs", "-h", str(raw)], check=False, capture_output=True, text=True
        )
        return probe.returncode == 0 and "sandboxd-root" in probe.stdout
    finally:
        raw.unlink()


def test_concurrent_builders_publish_one_valid_base_image(tmp_path: Path) -> None:
    rootfs = build_rootfs(Settings().data_dir)
    data_dir = tmp_path / "data"
    # The kernel download is cached per data directory; share the already extracted one.
    shared_kernel = Settings().data_dir / "qemu" / "kernel"
    if shared_kernel.is_dir():
        shutil.copytree(shared_kernel, data_dir / "qemu" / "kernel")

    with ThreadPoolExecutor(max_workers=3) as pool:
        images = list(
            pool.map(
                lambda _: build_qemu_image(data_dir, rootfs.path, rootfs.content_hash), range(3)
            )
        )

    assert len({image.base for image in images}) == 1
    assert len({image.base_hash for image in images}) == 1
    assert _is_ext4(images[0].base, tmp_path)
