"""L2 for QEMU: one qcow2 disk per environment key, plus the memory snapshot of a VM booted from it.

Build of a key (``<qemu dir>/environments/<key>/disk.qcow2``, see adapter.qemu.envdisk):
1. the host fetches built artifacts only (adapter.environment.host_fetch, shared with the Docker
   store): wheels, or npm packages unpacked with their scripts ignored; no package code runs on
   the host;
2. they go, with an install script written here, into an ext4 image (``mkfs.ext4 -d``) that a
   build VM gets as its second disk, read-only. The build VM has no network device; it boots in
   build mode (the only mode whose root disk is writable: a fresh qcow2 overlay over the base
   image), runs the script (``pip install --no-index`` into the root), prints its exit status
   on the console and powers off;
3. the overlay becomes the environment's disk (renamed into place), and a VM booted from it
   (read-only root, as every sandbox) is snapshotted, so chats of this environment restore in a
   fraction of a second with the interpreter warm.

One build per key at a time across processes (file lock per key); a failed build leaves no
entry. An entry whose backing file is missing or is not the current base image is removed and
rebuilt. Past ``max_total_mb`` the least recently used entries are evicted (their disk's own
allocated size counts; use is the mtime of ``env.json``). The base environment (no packages) is
the base image itself and is never built or evicted.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from adapter.environment.host_fetch import HostFetchConfig, download_wheels, stage_npm_packages
from adapter.qemu.envdisk import EnvironmentDisk
from adapter.qemu.initramfs import BUILD_SCRIPT
from adapter.qemu.runtime import QemuSandboxRuntime
from adapter.qemu.vm import VmDir
from domain.environment import BuiltEnvironment, Environment, is_cache_key
from domain.errors import EnvironmentBuildError, RuntimeUnavailableError
from domain.execution import Language
from usecase.ports import Logger

Progress = Callable[[str], None]

INPUT_MOUNT = "/mnt"  # where the build VM's init mounts the input disk
# On node's built-in global path in Debian's nodejs, so require() finds these without NODE_PATH.
NODE_GLOBAL_DIR = "/usr/lib/x86_64-linux-gnu/nodejs"


@dataclass(frozen=True)
class QemuEnvironmentConfig:
    service_version: str
    max_total_mb: int = 8192
    build_timeout_s: float = 900.0
    lock_timeout_s: float = 1800.0
    # Take the memory snapshot right after the build (a cold boot plus the preloads: tens of
    # seconds under TCG), so the first chat of the environment restores.
    snapshot: bool = True
    fetch: HostFetchConfig = field(default_factory=HostFetchConfig)


class QemuEnvironmentStore:
    """EnvironmentStore port on QEMU qcow2 disks; see the module docstring for the rules."""

    def __init__(
        self,
        runtime: QemuSandboxRuntime,
        config: QemuEnvironmentConfig,
        logger: Logger,
        progress: Progress = lambda _message: None,
    ) -> None:
        self._runtime = runtime
        self._config = config
        self._logger = logger
        self._progress = progress
        self._disks = runtime.environment_disks

    # -- port ---------------------------------------------------------------------------------

    def key_for(self, environment: Environment) -> str:
        return environment.cache_key(self._config.service_version, self._runtime.image().image_hash)

    def find(self, key: str) -> BuiltEnvironment | None:
        if not is_cache_key(key) or key.endswith("-base"):
            return None
        base = self._runtime.image().base
        entry, reason = self._disks.load(key, base)
        if entry is None:
            if reason != "missing":
                # A disk over a base that is gone or another one would not boot (or would boot
                # the wrong files): drop it, the next ensure rebuilds it.
                self._logger.warning("environment_invalid", {"key": key, "reason": reason})
                self._disks.remove(key)
            return None
        self._disks.touch(key)
        return _built(entry)

    def ensure(self, environment: Environment) -> BuiltEnvironment:
        image = self._runtime.image()
        key = self.key_for(environment)
        if environment.is_base:
            return BuiltEnvironment(key, environment, str(image.base), 0)
        found = self.find(key)
        if found is not None:
            self._logger.info("environment_found", {"key": key})
            return found
        lock_path = self._disks.lock_path(key)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock_path), timeout=self._config.lock_timeout_s):
                found = self.find(key)  # built by another process while we waited
                if found is not None:
                    self._logger.info("environment_found", {"key": key, "after_wait": True})
                    return found
                self._remove_leftovers(key)
                built = self._build(environment, key, image.base)
                if self._config.snapshot:
                    self._runtime.prepare_snapshot(environment_key=key)
        except Timeout as exc:
            raise EnvironmentBuildError(f"timed out waiting for the build of {key}") from exc
        self._evict(keep=key)
        return built

    def remove(self, key: str) -> None:
        if not is_cache_key(key) or key.endswith("-base"):
            return
        self._disks.remove(key)
        self._logger.info("environment_removed", {"key": key})

    def list_keys(self) -> list[str]:
        return self._disks.keys()

    # -- build --------------------------------------------------------------------------------

    def _build(self, environment: Environment, key: str, base: Path) -> BuiltEnvironment:
        started = time.monotonic()
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
            overlay = self._runtime.run_build_vm(staging, input_disk, self._config.build_timeout_s)
            entry_dir = staging / "entry"
            entry_dir.mkdir()
            # The build VM's overlay holds only what the install changed; its header names the
            # base image (checked on every load).
            disk = entry_dir / "disk.qcow2"
            overlay.rename(disk)
            disk.chmod(0o444)
            entry = self._disks.commit(
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
        except (EnvironmentBuildError, RuntimeUnavailableError, OSError) as exc:
            package = exc.package if isinstance(exc, EnvironmentBuildError) else None
            self._logger.error(
                "environment_build_failed",
                {"key": key, "package": package or "", "error": str(exc)[:500]},
            )
            if isinstance(exc, OSError):
                raise RuntimeUnavailableError(f"environment build of {key}: {exc}") from exc
            raise
        finally:
            self._kill_build_vms(staging)
            shutil.rmtree(staging, ignore_errors=True)
        self._logger.info(
            "environment_built",
            {
                "key": key,
                "packages": " ".join(environment.packages),
                "size_bytes": entry.size_bytes,
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        return _built(entry)

    def _stage_input(self, environment: Environment, source: Path) -> None:
        """Artifacts and the install script the build VM runs (as root, in its own root)."""
        if environment.language is Language.PYTHON:
            wheels = source / "wheels"
            wheels.mkdir()
            fetch = self._config.fetch
            found = download_wheels(fetch, environment.packages, wheels, self._progress)
            self._progress(f"fetched {len(found)} wheels")
            (source / "requirements.txt").write_text("\n".join(environment.packages) + "\n")
            script = _pip_install_script()
        elif environment.language is Language.JAVASCRIPT:
            stage_npm_packages(self._config.fetch, environment.packages, source, self._progress)
            script = (
                f"set -e\nmkdir -p {NODE_GLOBAL_DIR}\n"
                f"cp -a --no-preserve=ownership {INPUT_MOUNT}/node_modules/. {NODE_GLOBAL_DIR}\n"
            )
        else:  # Environment refuses packages for other languages
            raise EnvironmentBuildError(f"no package support for {environment.language}")
        (source / BUILD_SCRIPT).write_text(script)

    def _remove_leftovers(self, key: str) -> None:
        """Build VMs and staging dirs of this key from a builder that crashed; safe under the
        key's lock."""
        for staging in self._disks.staging_root().glob(f"{key}-*"):
            self._kill_build_vms(staging)
            shutil.rmtree(staging, ignore_errors=True)
            self._logger.warning("environment_build_leftovers_removed", {"key": key})

    @staticmethod
    def _kill_build_vms(staging: Path) -> None:
        for vm_path in staging.glob("qvm-*"):
            VmDir(vm_path).kill()

    # -- LRU eviction -------------------------------------------------------------------------

    def _evict(self, keep: str) -> None:
        keys = self._disks.keys()
        sizes = {key: self._disks.size(key) for key in keys}
        budget = self._config.max_total_mb * 1024 * 1024
        total = sum(sizes.values())
        for key in sorted((k for k in keys if k != keep), key=self._disks.last_used):
            if total <= budget:
                break
            # Running VMs keep their open disk (QEMU holds descriptors); new ones rebuild it.
            self._disks.remove(key)
            total -= sizes[key]
            self._logger.info("environment_evicted", {"key": key, "size_bytes": sizes[key]})


def _pip_install_script() -> str:
    command = [
        "python3", "-m", "pip", "install",
        "--no-index", "--find-links", f"{INPUT_MOUNT}/wheels",
        # Debian marks its interpreter externally managed; these go to /usr/local, in front of
        # Debian's own packages on sys.path.
        "--break-system-packages",
        "--no-cache-dir", "--disable-pip-version-check", "--root-user-action=ignore",
        "--no-input", "--progress-bar", "off",
        "-r", f"{INPUT_MOUNT}/requirements.txt",
    ]  # fmt: skip
    return "set -e\n" + shlex.join(command) + "\n"


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


def _built(entry: EnvironmentDisk) -> BuiltEnvironment:
    return BuiltEnvironment(
        key=entry.key,
        environment=Environment(Language(entry.language), entry.packages),
        reference=str(entry.disk),
        size_bytes=entry.size_bytes,
    )
