"""Builds a QEMU environment disk for one key (``<qemu dir>/environments/<key>/disk.qcow2``).

1. the host fetches built artifacts only (adapter.environment.host_fetch, shared with the Docker
   store): wheels, or npm packages unpacked with their scripts ignored; no package code runs on
   the host;
2. they go, with an install script written here, into an ext4 image (``mkfs.ext4 -d``) that a
   build VM gets as its second disk, read-only. The build VM has no network device; it boots in
   build mode (the only mode whose root disk is writable: a fresh qcow2 overlay over the base
   image), runs the script (the same offline install as the Docker build container's), prints
   its exit status on the console and powers off;
3. the overlay becomes the environment's disk (adapter.qemu.envdisk commits it by rename).
A failed build kills its VM and removes its staging directory; a crashed builder's are removed
before the next build of the key.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from adapter.environment.host_fetch import HostFetchConfig, download_wheels, stage_npm_packages
from adapter.environment.install_commands import (
    NODE_GLOBAL_DIR,
    copy_node_modules_command,
    pip_install_command,
)
from adapter.qemu.envdisk import EnvironmentDisk
from adapter.qemu.initramfs import BUILD_SCRIPT
from adapter.qemu.runtime import QemuSandboxRuntime
from adapter.qemu.vm import VmDir
from domain.environment import Environment
from domain.errors import EnvironmentBuildError, RuntimeUnavailableError
from domain.execution import Language
from usecase.ports import Logger

Progress = Callable[[str], None]

INPUT_MOUNT = "/mnt"  # where the build VM's init mounts the input disk


class QemuEnvironmentBuilder:
    """Builds keys into the runtime's environment disks (see the module docstring)."""

    def __init__(
        self,
        runtime: QemuSandboxRuntime,
        fetch: HostFetchConfig,
        build_timeout_s: float,
        logger: Logger,
        progress: Progress,
    ) -> None:
        self._runtime = runtime
        self._fetch = fetch
        self._build_timeout_s = build_timeout_s
        self._logger = logger
        self._progress = progress
        self._disks = runtime.environment_disks

    def build(self, environment: Environment, key: str, base: Path) -> EnvironmentDisk:
        staging_root = self._disks.staging_root()
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=staging_root))
        try:
            source = staging / "input"
            source.mkdir()
            self._stage_input(environment, source)
            input_disk = staging / "input.ext4"
            _make_ext4(source, input_disk)
            self._progress("installing in a build VM (no network)")
            overlay = self._runtime.run_build_vm(staging, input_disk, self._build_timeout_s)
            entry_dir = staging / "entry"
            entry_dir.mkdir()
            # The build VM's overlay holds only what the install changed; its header names the
            # base image (checked on every load).
            disk = entry_dir / "disk.qcow2"
            overlay.rename(disk)
            disk.chmod(0o444)
            return self._disks.commit(
                EnvironmentDisk(
                    key=key,
                    language=environment.language.value,
                    packages=environment.packages,
                    disk=disk,
                    base=base,
                    build_id=uuid.uuid4().hex,
                    size_bytes=disk.stat().st_blocks * 512,
                ),
                entry_dir,
            )
        finally:
            _kill_build_vms(staging)
            shutil.rmtree(staging, ignore_errors=True)

    def remove_leftovers(self, key: str) -> None:
        """Build VMs and staging dirs of this key from a builder that crashed; safe under the
        key's lock."""
        for staging in self._disks.staging_root().glob(f"{key}-*"):
            if not staging.is_dir():
                continue
            _kill_build_vms(staging)
            shutil.rmtree(staging, ignore_errors=True)
            self._logger.warning("environment_build_leftovers_removed", {"key": key})

    def _stage_input(self, environment: Environment, source: Path) -> None:
        """Artifacts and the install script the build VM runs (as root, in its own root)."""
        if environment.language is Language.PYTHON:
            wheels = source / "wheels"
            wheels.mkdir()
            found = download_wheels(self._fetch, environment.packages, wheels, self._progress)
            self._progress(f"fetched {len(found)} wheels")
            (source / "requirements.txt").write_text("\n".join(environment.packages) + "\n")
            commands = [
                pip_install_command(
                    f"{INPUT_MOUNT}/wheels", "-r", f"{INPUT_MOUNT}/requirements.txt"
                )
            ]
        elif environment.language is Language.JAVASCRIPT:
            stage_npm_packages(self._fetch, environment.packages, source, self._progress)
            commands = [
                ["mkdir", "-p", NODE_GLOBAL_DIR],
                copy_node_modules_command(f"{INPUT_MOUNT}/node_modules"),
            ]
        else:  # Environment refuses packages for other languages
            raise EnvironmentBuildError(f"no package support for {environment.language}")
        script = "set -e\n" + "".join(shlex.join(command) + "\n" for command in commands)
        (source / BUILD_SCRIPT).write_text(script)


def _kill_build_vms(staging: Path) -> None:
    for vm_path in staging.glob("qvm-*"):
        VmDir(vm_path).kill()


def _make_ext4(source: Path, destination: Path) -> None:
    used = sum(entry.stat().st_size for entry in source.rglob("*") if entry.is_file())
    size_mb = int(used * 1.3 / (1 << 20)) + 16
    try:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-m", "0", "-d", str(source),
             str(destination), f"{size_mb}M"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RuntimeUnavailableError(f"mkfs.ext4 failed: {detail.strip()}") from exc
