"""MicroVM boot artifacts built from the shared root filesystem, each content-hashed.

- kernel: Debian's cloud kernel, extracted per package version (adapter.qemu.kernel);
- initramfs: busybox + virtio modules + /init, named by the hash of its inputs;
- base image: the root filesystem as a journal-less ext4 (``mkfs.ext4 -d``) in a read-only qcow2,
  named by the root filesystem's content hash.

Every step is skipped when its output for the same inputs already exists. The set is addressed
by its inputs: ``sets/<rootfs hash 16>.json`` records the kernel, initramfs and base image built
for that root filesystem (kernel and initramfs come from the host's packages). A runtime looks up
the set of ITS OWN root filesystem hash (computed from the local agent and package list, as the
Docker tag is), so services, worktrees and tests with different inputs never swap the image
under each other's VMs. The snapshot key is built from the hashes recorded in the set.

Loading a set touches its manifest: that is "in use". Pruning (after a build) removes only sets
whose manifest has not been touched for an hour, with their base images, and initramfs files no
remaining set names.

Builders serialise on ``build.lock`` in the QEMU data directory: a service starting up and a
test fixture (or two CLI calls) building the same base image at once would otherwise share one
staging directory and publish a corrupted file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from adapter.image.rootfs import rootfs_hash as local_rootfs_hash
from adapter.qemu.initramfs import INIT_SCRIPT, build_initramfs
from adapter.qemu.kernel import ensure_kernel
from domain.errors import RuntimeUnavailableError

Progress = Callable[[str], None]

BUSYBOX = Path("/bin/busybox")
SETS = "sets"
BUILD_LOCK = "build.lock"
# Superseded artifacts younger than this are kept: another process (a second service on the same
# data directory, a test run) may have just built them and be about to boot from them.
PRUNE_MIN_AGE_S = 3600.0


@dataclass(frozen=True)
class QemuImage:
    kernel: Path
    kernel_hash: str
    initrd: Path
    initrd_hash: str
    base: Path
    base_hash: str
    rootfs_hash: str

    @property
    def image_hash(self) -> str:
        """Changes whenever anything the guest boots from changes."""
        return _sha256_text(f"{self.kernel_hash}:{self.initrd_hash}:{self.base_hash}")


def qemu_dir(data_dir: Path) -> Path:
    return data_dir / "qemu"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _run(args: list[str]) -> None:
    try:
        subprocess.run(args, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RuntimeUnavailableError(f"{args[0]} failed: {detail.strip()}") from exc


def build_qemu_image(
    data_dir: Path, rootfs_dir: Path, rootfs_hash: str, progress: Progress | None = None
) -> QemuImage:
    """Build (or reuse) kernel, initramfs and base image for this root filesystem."""
    root = qemu_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / BUILD_LOCK)):
        return _build_locked(root, rootfs_dir, rootfs_hash, progress)


def _build_locked(
    root: Path, rootfs_dir: Path, rootfs_hash: str, progress: Progress | None
) -> QemuImage:
    say = progress or (lambda _message: None)
    kernel = ensure_kernel(root / "kernel", say)
    kernel_hash = _cached_hash(kernel.vmlinuz)

    initrd_inputs = ":".join(
        [_sha256_text(INIT_SCRIPT), file_sha256(BUSYBOX)]
        + [file_sha256(module) for module in sorted(kernel.modules_dir.glob("*.ko"))]
    )
    initrd_hash = _sha256_text(initrd_inputs)
    initrd = root / "initramfs" / f"{initrd_hash[:16]}.cpio.gz"
    if initrd.is_file():
        say("initramfs up to date")
    else:
        say("building initramfs")
        initrd.parent.mkdir(parents=True, exist_ok=True)
        build_initramfs(BUSYBOX, kernel.modules_dir, initrd)

    base = root / "base" / rootfs_hash[:16] / "base.qcow2"
    if base.is_file():
        say("base image up to date")
    else:
        say("building base image (ext4 -> qcow2)")
        _build_base(rootfs_dir, rootfs_hash, base)
    image = QemuImage(
        kernel=kernel.vmlinuz,
        kernel_hash=kernel_hash,
        initrd=initrd,
        initrd_hash=initrd_hash,
        base=base,
        base_hash=_cached_hash(base),
        rootfs_hash=rootfs_hash,
    )
    manifest = _manifest(root, rootfs_hash)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(image), default=str, indent=2))
    tmp.replace(manifest)
    _prune(root)
    return image


def _manifest(root: Path, rootfs_hash: str) -> Path:
    return root / SETS / f"{rootfs_hash[:16]}.json"


def _prune(root: Path) -> None:
    """Drop image sets unused for an hour: their manifest, base image (~1 GB) and initramfs.

    Called under the build lock. A set in use has its manifest touched on every load; VMs still
    running on a pruned base keep it open (QEMU holds descriptors), so they are not disturbed.
    Base images and initramfs files no manifest names (left by older builders) go by age too.
    """
    cutoff = time.time() - PRUNE_MIN_AGE_S

    def old(path: Path) -> bool:
        try:
            return path.stat().st_mtime < cutoff
        except FileNotFoundError:
            return False

    keep: set[Path] = set()
    for manifest in sorted((root / SETS).glob("*.json")):
        if old(manifest):
            manifest.unlink(missing_ok=True)
            continue
        try:
            raw = json.loads(manifest.read_text())
            keep |= {Path(raw["base"]).parent, Path(raw["initrd"])}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    keep |= {path.with_name(path.name + ".sha256") for path in keep}
    for entry in [*(root / "base").glob("*"), *(root / "initramfs").glob("*")]:
        if entry in keep or ".building" in entry.name or not old(entry):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def load_qemu_image(data_dir: Path, rootfs_hash: str | None = None) -> QemuImage | None:
    """The image set built for ``rootfs_hash`` (default: this checkout's agent and package list),
    or None when it was never built or a file has gone missing. Marks the set in use (see the
    module docstring)."""
    rootfs_hash = rootfs_hash or local_rootfs_hash()
    manifest = _manifest(qemu_dir(data_dir), rootfs_hash)
    try:
        raw = json.loads(manifest.read_text())
        image = QemuImage(
            kernel=Path(raw["kernel"]),
            kernel_hash=raw["kernel_hash"],
            initrd=Path(raw["initrd"]),
            initrd_hash=raw["initrd_hash"],
            base=Path(raw["base"]),
            base_hash=raw["base_hash"],
            rootfs_hash=raw["rootfs_hash"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if image.rootfs_hash != rootfs_hash:
        return None
    if not all(path.is_file() for path in (image.kernel, image.initrd, image.base)):
        return None
    for used in (manifest, image.base.parent, image.initrd):
        with contextlib.suppress(OSError):
            os.utime(used)
    # A file changed behind our back (same name, other bytes) must change the snapshot key.
    return QemuImage(
        kernel=image.kernel,
        kernel_hash=_cached_hash(image.kernel),
        initrd=image.initrd,
        initrd_hash=image.initrd_hash,
        base=image.base,
        base_hash=_cached_hash(image.base),
        rootfs_hash=image.rootfs_hash,
    )


def _cached_hash(path: Path) -> str:
    """sha256 of a file, remembered next to it and recomputed when its size or mtime changes."""
    stamp_file = path.with_name(path.name + ".sha256")
    info = path.stat()
    stamp = f"{info.st_size}:{info.st_mtime_ns}"
    try:
        recorded_stamp, recorded_hash = stamp_file.read_text().split()
        if recorded_stamp == stamp:
            return recorded_hash
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    stamp_file.write_text(f"{stamp} {digest}\n")
    return digest


def _build_base(rootfs_dir: Path, rootfs_hash: str, base: Path) -> None:
    staging = base.parent.with_name(base.parent.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    raw = staging / "root.ext4"
    used = sum(entry.lstat().st_size for entry in rootfs_dir.rglob("*") if not entry.is_symlink())
    # Headroom for ext4 metadata and block rounding of many small files.
    size_mb = int(used * 1.4 / (1 << 20)) + 128
    # A UUID from the content hash keeps the file system identical across rebuilds.
    fs_uuid = str(uuid.UUID(rootfs_hash[:32]))
    _run(
        [
            "mkfs.ext4", "-q", "-F", "-L", "sandboxd-root", "-U", fs_uuid,
            "-O", "^has_journal", "-E", f"hash_seed={fs_uuid}", "-m", "0",
            "-d", str(rootfs_dir), str(raw), f"{size_mb}M",
        ]
    )  # fmt: skip
    _run(
        [
            "qemu-img",
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            str(raw),
            str(staging / base.name),
        ]
    )
    raw.unlink()
    (staging / base.name).chmod(0o444)
    shutil.rmtree(base.parent, ignore_errors=True)
    staging.rename(base.parent)
