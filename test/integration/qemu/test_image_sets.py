"""Image sets addressed by their inputs: sets of different root filesystems coexist in one image
directory and each runtime boots the set of its own inputs (regression: one global image.json
let a build for other inputs swap the image under running services); pruning spares sets in
use."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from adapter.image.rootfs import build_rootfs, rootfs_hash
from adapter.qemu.image import SETS, _prune, build_qemu_image, load_qemu_image, qemu_dir
from adapter.qemu.runtime import QemuSandboxRuntime
from domain.execution import ExecutionRequest
from testkit.qemu import RuntimeFactory

pytestmark = pytest.mark.qemu

MARKER = "etc/sandboxd-test-marker"


def _marker_seen(runtime: QemuSandboxRuntime) -> str:
    now = datetime.now(UTC)
    session = runtime.create(
        session_id=uuid4(), chat_id=uuid4(), created_at=now, expires_at=now + timedelta(hours=1)
    )
    result = runtime.execute(
        session.container_id,
        ExecutionRequest(code=f"import os; print(os.path.exists('/{MARKER}'))", timeout_s=120),
    )
    assert result.exit_code == 0, result
    return result.stdout.strip()


def test_two_image_sets_coexist_and_each_runtime_boots_its_own(
    qemu_image_dir: Path, make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    own_hash = rootfs_hash()
    tree = build_rootfs(qemu_image_dir).path  # cached: the set's own tree
    # Another root filesystem: hard links of this one plus a marker file, under another hash.
    other_tree = tmp_path / "rootfs"
    subprocess.run(["cp", "-al", str(tree), str(other_tree)], check=True)
    (other_tree / MARKER).write_text("other\n")
    other_hash = hashlib.sha256(f"test-other:{own_hash}".encode()).hexdigest()
    other = build_qemu_image(qemu_image_dir, other_tree, other_hash)
    try:
        own = load_qemu_image(qemu_image_dir, own_hash)
        assert own is not None, "building another set must not replace this one"
        assert load_qemu_image(qemu_image_dir, other_hash) == other
        assert own.base != other.base and own.base.is_file() and other.base.is_file()

        own_runtime, _ = make_runtime(snapshot=False, preload=())
        other_runtime, _ = make_runtime(snapshot=False, preload=(), rootfs_hash=other_hash)
        assert other_runtime.image().base == other.base
        assert _marker_seen(other_runtime) == "True"
        assert _marker_seen(own_runtime) == "False"
    finally:
        shutil.rmtree(other.base.parent, ignore_errors=True)
        (qemu_dir(qemu_image_dir) / SETS / f"{other_hash[:16]}.json").unlink(missing_ok=True)


def test_prune_removes_only_sets_unused_for_an_hour(tmp_path: Path) -> None:
    root = tmp_path / "qemu"
    old_time = time.time() - 2 * 3600

    def make_set(name: str, used_at: float | None) -> Path:
        base = root / "base" / name / "base.qcow2"
        base.parent.mkdir(parents=True)
        base.write_text("disk")
        initrd = root / "initramfs" / f"{name}.cpio.gz"
        initrd.parent.mkdir(parents=True, exist_ok=True)
        initrd.write_text("initrd")
        manifest = root / SETS / f"{name}.json"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps({"base": str(base), "initrd": str(initrd)}))
        if used_at is not None:
            for path in (manifest, base.parent, initrd):
                os.utime(path, (used_at, used_at))
        return base

    in_use = make_set("inuse", None)
    stale = make_set("stale", old_time)
    # Old files, but named by a set in use (another service boots from them): kept.
    os.utime(in_use.parent, (old_time, old_time))

    _prune(root)

    assert in_use.is_file()
    assert (root / SETS / "inuse.json").is_file()
    assert not stale.parent.exists()
    assert not (root / SETS / "stale.json").exists()
    assert not (root / "initramfs" / "stale.cpio.gz").exists()
