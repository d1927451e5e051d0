"""Environment disks on this host: ``<qemu dir>/environments/<key>/{disk.qcow2,env.json}``.

``disk.qcow2`` is a qcow2 overlay over the base image of one image set with the environment's
packages installed (adapter.qemu.environment builds it); ``env.json`` records the packages, the
base image it was built over and a build id (a snapshot of a VM booted from the disk names that
id in its key, so a rebuilt disk never restores an old snapshot). An entry is only valid while
its disk's backing file is the base image recorded in ``env.json`` and that base still exists:
``load`` says why it is not, and the caller removes and rebuilds it.

Entries appear by renaming a complete staging directory into place, so a failed or killed build
never leaves a half entry under a key.

A disk downloaded from the artifact store (another host's build of the same key, so of the same
image set) names the base image by that host's path. ``adopt`` accepts it only as a plain qcow2
of the base's virtual size, without an external data file, whose backing file is a base image
of the same set (``<rootfs hash>/base.qcow2``), re-points it at this host's base without reading
the old one (``qemu-img rebase -u``), and checks its metadata (``qemu-img check``) before it
becomes an entry. Anything else is refused (ArtifactStoreUnavailableError) and nothing is kept:
the caller builds the key locally.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain.environment import is_cache_key
from domain.errors import ArtifactStoreUnavailableError

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

    def read(self, key: str) -> tuple[EnvironmentDisk | None, str]:
        """The entry's record as written (not validated), or None and why there is none."""
        directory = self.directory(key)
        try:
            raw = json.loads((directory / META).read_text())
            return EnvironmentDisk(
                key=key,
                language=str(raw["language"]),
                packages=tuple(raw["packages"]),
                disk=directory / DISK,
                base=Path(raw["base"]),
                build_id=str(raw["build_id"]),
                size_bytes=int(raw["size_bytes"]),
            ), "ok"
        except FileNotFoundError:
            return None, "missing"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"unreadable {META}: {exc}"

    def load(self, key: str, base: Path) -> tuple[EnvironmentDisk | None, str]:
        """The valid entry for ``key`` over ``base``, or None and why there is none."""
        entry, reason = self.read(key)
        if entry is None:
            return None, reason
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

    def list_keys(self) -> list[str]:
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

    def adopt(
        self, key: str, artifact: Path, base: Path, language: str, packages: tuple[str, ...]
    ) -> EnvironmentDisk:
        """Make a downloaded disk the entry of ``key`` over ``base`` (see the module docstring);
        ``artifact`` is moved away. ArtifactStoreUnavailableError when it is unfit."""
        self.staging_root().mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{key}-adopt-", dir=self.staging_root()))
        try:
            disk = work / DISK
            artifact.replace(disk)
            _check_foreign_disk(disk, base)
            _qemu_img("rebase", "-u", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk))
            _qemu_img("check", "-q", "-f", "qcow2", str(disk))
            disk.chmod(0o444)
            entry = EnvironmentDisk(
                key=key,
                language=language,
                packages=packages,
                disk=disk,
                base=base,
                build_id=uuid.uuid4().hex,
                size_bytes=disk.stat().st_blocks * 512,
            )
            self.commit(entry, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # gone already when committed
        loaded, reason = self.load(key, base)
        if loaded is None:
            self.remove(key)
            raise ArtifactStoreUnavailableError(f"adopted disk of {key} is not usable: {reason}")
        return loaded

    def remove(self, key: str) -> None:
        directory = self.directory(key)
        # Renamed away first: a reader never sees a half-deleted entry.
        doomed = directory.with_name(f".{key}.removing.{os.getpid()}")
        try:
            directory.rename(doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)


def _check_foreign_disk(disk: Path, base: Path) -> None:
    """Refuse a downloaded disk that is not a plain qcow2 overlay of a base image like ``base``.
    ``qemu-img info`` opens neither its backing file nor its data."""
    info = _image_info(disk)
    specific = (info.get("format-specific") or {}).get("data") or {}
    backing = str(info.get("backing-filename") or "")
    if info.get("format") != "qcow2":
        raise ArtifactStoreUnavailableError(f"downloaded disk is {info.get('format')}, not qcow2")
    if "data-file" in specific:
        # Its clusters would be read from a host file the disk names.
        raise ArtifactStoreUnavailableError("downloaded disk uses an external data file")
    if Path(backing).parts[-2:] != base.parts[-2:] or not Path(backing).is_absolute():
        raise ArtifactStoreUnavailableError(
            f"downloaded disk is over {backing or 'nothing'}, not a base image like {base}"
        )
    if info.get("backing-filename-format") not in (None, "qcow2"):
        raise ArtifactStoreUnavailableError("downloaded disk's backing format is not qcow2")
    if info.get("virtual-size") != _image_info(base).get("virtual-size"):
        raise ArtifactStoreUnavailableError("downloaded disk's size differs from the base image's")


def _image_info(path: Path) -> dict[str, Any]:
    answer = _qemu_img("info", "--output=json", "-U", "-f", "qcow2", str(path))
    try:
        info = json.loads(answer)
    except ValueError as exc:
        raise ArtifactStoreUnavailableError(f"qemu-img info of {path.name}: {exc}") from exc
    if not isinstance(info, dict):
        raise ArtifactStoreUnavailableError(f"qemu-img info of {path.name}: not an object")
    return info


def _qemu_img(*args: str) -> str:
    try:
        done = subprocess.run(
            ["qemu-img", *args], capture_output=True, text=True, check=True, timeout=120
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()[-300:]
        raise ArtifactStoreUnavailableError(f"qemu-img {args[0]}: {detail}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ArtifactStoreUnavailableError(f"qemu-img {args[0]}: {exc}") from exc
    return done.stdout


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
