"""Memory snapshots of a booted, agent-ready VM, keyed by everything that shapes them.

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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT_VERSION = "1"
PRUNE_AFTER_S = 3600.0


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
