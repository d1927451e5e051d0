"""The guest kernel: Debian's cloud kernel package, extracted (never installed into /boot)."""

from __future__ import annotations

import lzma
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adapter.qemu.initramfs import VIRTIO_MODULES
from domain.errors import RuntimeUnavailableError

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class KernelArtifact:
    version: str
    vmlinuz: Path
    modules_dir: Path  # flat: <name>.ko for each of VIRTIO_MODULES


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RuntimeUnavailableError(f"{' '.join(args)} failed: {detail.strip()}") from exc
    return done.stdout


def resolve_kernel_package() -> tuple[str, str]:
    """(package, version) the meta package points at, from the local apt cache (no network)."""
    depends = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    package = next(
        (
            line.split(":", 1)[1].strip()
            for line in depends.splitlines()
            if line.strip().startswith("Depends:") and "linux-image-" in line
        ),
        "",
    )
    if not package:
        raise RuntimeUnavailableError(f"apt knows no {KERNEL_META_PACKAGE}; run apt-get update")
    policy = _run(["apt-cache", "policy", package])
    version = next(
        (
            line.split(":", 1)[1].strip()
            for line in policy.splitlines()
            if line.strip().startswith("Candidate:")
        ),
        "",
    )
    if not version or version == "(none)":
        raise RuntimeUnavailableError(f"no installable version of {package}")
    return package, version


def ensure_kernel(cache_dir: Path, progress: Progress | None = None) -> KernelArtifact:
    """Download and extract the kernel once per package version; later calls reuse it."""
    package, version = resolve_kernel_package()
    target = cache_dir / f"{package}_{version}"
    vmlinuz = target / "vmlinuz"
    modules_dir = target / "modules"
    if vmlinuz.is_file() and all((modules_dir / f"{m}.ko").is_file() for m in VIRTIO_MODULES):
        return KernelArtifact(
            version=f"{package}_{version}", vmlinuz=vmlinuz, modules_dir=modules_dir
        )
    if progress is not None:
        progress(f"downloading {package} {version}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp_name:
        tmp = Path(tmp_name)
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp)
        debs = list(tmp.glob("*.deb"))
        if not debs:
            raise RuntimeUnavailableError(f"apt-get download {package} produced no package")
        extracted = tmp / "x"
        _run(["dpkg-deb", "-x", str(debs[0]), str(extracted)])
        staging = tmp / "out"
        (staging / "modules").mkdir(parents=True)
        kernels = sorted((extracted / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise RuntimeUnavailableError(f"{package} holds no /boot/vmlinuz-*")
        shutil.copyfile(kernels[0], staging / "vmlinuz")
        for name in VIRTIO_MODULES:
            _copy_module(extracted, name, staging / "modules" / f"{name}.ko")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return KernelArtifact(version=f"{package}_{version}", vmlinuz=vmlinuz, modules_dir=modules_dir)


def _copy_module(extracted: Path, name: str, destination: Path) -> None:
    for suffix in (".ko", ".ko.xz"):
        found = sorted(extracted.glob(f"lib/modules/*/kernel/**/{name}{suffix}"))
        if found:
            data = found[0].read_bytes()
            destination.write_bytes(lzma.decompress(data) if suffix == ".ko.xz" else data)
            return
    raise RuntimeUnavailableError(f"kernel package has no module {name}")
