"""Environment disks on this host: ``<qemu dir>/environments/<key>/{disk.qcow2,env.json}``.

``disk.qcow2`` is a qcow2 overlay over the base image of one image set with the environment's
packages installed (adapter.qemu.environment builds it); ``env.json`` records the packages, the
base image it was built over and a build id (a snapshot of a VM booted from the disk names that
id in its key, so a rebuilt disk never restores an old snapshot). An entry is only valid while
its disk's backing file is the base image recorded in ``env.json`` and that base still exists:
``load`` says why it is not, and the caller removes and rebuilds it.

Entries appear by renaming a complete staging directory into place, so a failed or killed build
never leaves a half entry under a key.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from domain.environment import is_cache_key

DISK = "disk.qcow2"
META = "env.json"


@dataclass(frozen=True)
class EnvironmentDisk:
    key: str
    language: str
    packages: tuple[str, ...]
    disk: Path
    base: Path
    build_id: str
    size_bytes: int


class EnvironmentDisks:
    """The entries of one QEMU data directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, key: str) -> Path:
        if not is_cache_key(key):
            raise ValueError(f"not an environment cache key: {key!r}")
        return self.root / key

    def lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    def staging_root(self) -> Path:
        return self.root / "staging"

    def load(self, key: str, base: Path) -> tuple[EnvironmentDisk | None, str]:
        """The valid entry for ``key`` over ``base``, or None and why there is none."""
        directory = self.directory(key)
        try:
            raw = json.loads((directory / META).read_text())
            entry = EnvironmentDisk(
                key=key,
                language=str(raw["language"]),
                packages=tuple(raw["packages"]),
                disk=directory / DISK,
                base=Path(raw["base"]),
                build_id=str(raw["build_id"]),
                size_bytes=int(raw["size_bytes"]),
            )
        except FileNotFoundError:
            return None, "missing"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"unreadable {META}: {exc}"
        if entry.base != base:
            return None, f"built over {entry.base}, the base image is now {base}"
        if not base.is_file():
            return None, f"base image {base} is missing"
        backing = backing_file(entry.disk)
        if backing != str(base):
            return None, f"disk's backing file is {backing or 'unreadable'}, expected {base}"
        return entry, "ok"

    def touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.directory(key) / META)

    def last_used(self, key: str) -> float:
        try:
            return (self.directory(key) / META).stat().st_mtime
        except OSError:
            return 0.0

    def keys(self) -> list[str]:
        try:
            return sorted(
                entry.name
                for entry in self.root.iterdir()
                if is_cache_key(entry.name) and (entry / META).is_file()
            )
        except FileNotFoundError:
            return []

    def size(self, key: str) -> int:
        try:
            return (self.directory(key) / DISK).stat().st_blocks * 512
        except OSError:
            return 0

    def commit(self, entry: EnvironmentDisk, staging: Path) -> EnvironmentDisk:
        """Move ``staging/disk.qcow2`` into place with its ``env.json``; atomic by rename."""
        meta = {
            "language": entry.language,
            "packages": list(entry.packages),
            "base": str(entry.base),
            "build_id": entry.build_id,
            "size_bytes": entry.size_bytes,
        }
        (staging / META).write_text(json.dumps(meta, indent=2))
        final = self.directory(entry.key)
        self.remove(entry.key)
        staging.rename(final)
        return EnvironmentDisk(**{**entry.__dict__, "disk": final / DISK})

    def remove(self, key: str) -> None:
        directory = self.directory(key)
        # Renamed away first: a reader never sees a half-deleted entry.
        doomed = directory.with_name(f".{key}.removing.{os.getpid()}")
        try:
            directory.rename(doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)


def backing_file(disk: Path) -> str:
    """The backing file named in a qcow2 header ("" when there is none or it is unreadable)."""
    try:
        result = subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(disk)],
            capture_output=True,
            text=True,
            check=True,
        )
        return str(json.loads(result.stdout).get("backing-filename") or "")
    except (OSError, subprocess.CalledProcessError, ValueError):
        return ""
