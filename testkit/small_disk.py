"""A small filesystem of its own (a size-capped tmpfs) to fill up: a data directory's disk full.

Mounting needs root (the project's test machines run the suite as root). ``fill`` writes a
ballast file until the filesystem refuses (ENOSPC); ``free`` deletes it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK = b"\0" * (64 * 1024)


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ballast = path / "ballast"

    def fill(self) -> int:
        """Write until ENOSPC; the bytes written. Then also the last partial blocks: byte by
        byte-ish, so that not even a small write fits afterwards."""
        written = 0
        with self.ballast.open("ab", buffering=0) as out:
            for chunk in (_CHUNK, _CHUNK[:4096], _CHUNK[:64], _CHUNK[:1]):
                while True:
                    try:
                        written += out.write(chunk) or 0
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return written

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def available_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize


@contextmanager
def small_disk(size_mb: int) -> Iterator[SmallDisk]:
    """A tmpfs of ``size_mb`` mounted on a fresh directory; unmounted and removed at the end."""
    if os.geteuid() != 0:
        raise PermissionError("mounting a tmpfs for the disk-full test needs root")
    path = Path(tempfile.mkdtemp(prefix="sandboxd-disk-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
