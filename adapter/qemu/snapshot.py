"""Memory snapshots of a booted, agent-ready VM, keyed by everything that shapes them: the
store (SnapshotStore) and the lifecycle that builds them when missing (SnapshotLifecycle).

A snapshot restores only onto the same kernel, initramfs, disk contents, QEMU version, memory
size, vCPU count and accelerator; its key is the hash of all of them. ``key.json`` next to the
memory file repeats the key's inputs, and it is compared before every use: a snapshot whose key
differs is stale and gets rebuilt, never restored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from adapter.qemu.image import QemuImage
from adapter.qemu.launcher import VmLauncher
from adapter.qemu.vm import VmDir, VmMeta, VmSpec, new_vm_id
from domain.errors import RuntimeUnavailableError, SandboxGoneError
from domain.execution import ExecutionRequest
from usecase.ports import Logger

# 2: QEMU sandboxed, console on stdio, disks and sockets passed as descriptors.
# 3: modules preloaded (on the kernel command line), environment overlays.
FORMAT_VERSION = "3"
PRUNE_AFTER_S = 3600.0
_WARM_UP = "import random as _sandboxd_warm_up\ndel _sandboxd_warm_up\n"


@dataclass(frozen=True)
class SnapshotKey:
    image_hash: str
    kernel_hash: str
    initrd_hash: str
    base_hash: str
    qemu_version: str
    memory_mb: int
    vcpus: int
    accel: str
    kernel_cmdline: str
    environment: str = ""  # "<key>:<build id>" of the environment disk, "" for the base image
    format_version: str = FORMAT_VERSION

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    key: SnapshotKey
    memory_file: Path


class SnapshotStore:
    """``<root>/<digest16>/{memory.bin,key.json}``; written in a side directory, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, key: SnapshotKey) -> Path:
        return self.root / key.digest[:16]

    def lock_path(self, key: SnapshotKey) -> Path:
        return self.root / f"{key.digest[:16]}.lock"

    def find(self, key: SnapshotKey) -> tuple[Snapshot | None, str]:
        """The usable snapshot for ``key``, or None and the reason there is none."""
        directory = self.directory(key)
        memory = directory / "memory.bin"
        try:
            recorded = json.loads((directory / "key.json").read_text())
        except FileNotFoundError:
            return None, "no snapshot yet"
        except (OSError, ValueError) as exc:
            return None, f"unreadable key.json: {exc}"
        if recorded != asdict(key):
            changed = sorted(
                name for name, value in asdict(key).items() if recorded.get(name) != value
            )
            return None, f"stale snapshot: {', '.join(changed)} changed"
        if not memory.is_file() or memory.stat().st_size == 0:
            return None, "snapshot memory file is missing"
        with contextlib.suppress(OSError):
            os.utime(directory)  # "in use": see _remove_others
        return Snapshot(key, memory), "ok"

    def staging(self, key: SnapshotKey) -> Path:
        staging = self.root / f"{key.digest[:16]}.building.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def commit(self, key: SnapshotKey, staging: Path) -> Snapshot:
        (staging / "key.json").write_text(json.dumps(asdict(key), sort_keys=True, indent=2))
        final = self.directory(key)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        self._remove_others(keep=final)
        return Snapshot(key, final / "memory.bin")

    def discard(self, key: SnapshotKey) -> None:
        shutil.rmtree(self.directory(key), ignore_errors=True)

    def _remove_others(self, keep: Path) -> None:
        # Superseded snapshots are ~100 MB each. One that is still in use (another service on
        # the same data dir with other settings) was rebuilt or restored from within the hour.
        cutoff = time.time() - PRUNE_AFTER_S
        for entry in self.root.iterdir():
            if not entry.is_dir() or entry == keep:
                continue
            try:
                used = entry.stat().st_mtime
            except OSError:
                continue
            if used < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


class SnapshotLifecycle:
    """The valid snapshot for a key, built from a cold-booted VM when there is none.

    One build at a time per key, across threads and processes (a second service, the CLI); a
    failed build is logged and gives None, so the caller cold-boots instead."""

    def __init__(
        self,
        store: SnapshotStore,
        launcher: VmLauncher,
        vms_root: Path,
        instance_id: str,
        logger: Logger,
    ) -> None:
        self._store = store
        self._launcher = launcher
        self._vms_root = vms_root
        self._instance_id = instance_id
        self._logger = logger
        self._lock = threading.Lock()
        self._builders: set[str] = set()

    def is_builder(self, vm_id: str) -> bool:
        """True for the VM this process is taking a snapshot from right now."""
        return vm_id in self._builders

    def ensure(self, image: QemuImage, spec: VmSpec, key: SnapshotKey) -> Snapshot | None:
        snapshot, reason = self._store.find(key)
        if snapshot is not None:
            return snapshot
        with self._lock:
            self._store.root.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self._store.lock_path(key))):
                snapshot, reason = self._store.find(key)
                if snapshot is not None:
                    return snapshot
                self._logger.info(
                    "qemu_snapshot_building", {"key": key.digest[:16], "reason": reason}
                )
                started = time.monotonic()
                try:
                    snapshot = self._build(image, spec, key)
                except (RuntimeUnavailableError, SandboxGoneError, OSError) as exc:
                    self._logger.warning(
                        "qemu_snapshot_failed",
                        {"key": key.digest[:16], "error": str(exc), "fallback": "cold_boot"},
                    )
                    return None
                self._logger.info(
                    "qemu_snapshot_built",
                    {
                        "key": key.digest[:16],
                        "bytes": snapshot.memory_file.stat().st_size,
                        "duration_s": round(time.monotonic() - started, 3),
                    },
                )
                return snapshot

    def _build(self, image: QemuImage, spec: VmSpec, key: SnapshotKey) -> Snapshot:
        staging = self._store.staging(key)
        vm_dir = VmDir(self._vms_root / new_vm_id())
        self._builders.add(vm_dir.vm_id)
        try:
            vm_dir.create(
                VmMeta(vm_dir.vm_id, self._instance_id, None, None, purpose="snapshot"),
                spec.backing(image.base),
            )
            vm = self._launcher.cold_boot(vm_dir, image, spec)
            assert vm.client is not None
            # One execution so the snapshot holds a python interpreter that has run code already,
            # with the module the agent's reseed needs imported (a slow import under TCG).
            # It waits for the preloaded modules too: minutes under TCG on a busy host.
            warm = vm.client.execute(ExecutionRequest(code=_WARM_UP, timeout_s=600.0), 1024, None)
            if warm.exit_code != 0 or warm.timed_out:
                raise RuntimeUnavailableError(f"warm-up failed in the snapshot VM: {warm}")
            self._launcher.save_memory(vm, staging / "memory.bin")
            return self._store.commit(key, staging)
        finally:
            self._builders.discard(vm_dir.vm_id)
            self._launcher.destroy(vm_dir, None)
            shutil.rmtree(staging, ignore_errors=True)
