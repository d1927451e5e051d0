"""A small filesystem of its own (a tmpfs capped in size and inodes) to fill up: a data
directory's disk full.

Mounting needs root (the project's test machines run the suite as root). ``fill`` writes a
ballast file until the filesystem refuses (ENOSPC), then creates empty files until no inode is
left (so that creating even an empty file fails, as on a disk full of small files); ``free``
deletes them all.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK = b"\0" * (64 * 1024)


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ballast = path / "ballast"

    def fill(self) -> None:
        """Write until ENOSPC, in ever smaller pieces so that not even a small write fits
        afterwards; then use up the inodes."""
        self.ballast.mkdir(exist_ok=True)
        with (self.ballast / "blocks").open("ab", buffering=0) as out:
            for chunk in (_CHUNK, _CHUNK[:4096], _CHUNK[:64], _CHUNK[:1]):
                while _fits(out.write, chunk):
                    pass
        index = 0
        while _fits(Path.touch, self.ballast / f"i{index}"):
            index += 1

    def free(self) -> None:
        shutil.rmtree(self.ballast, ignore_errors=True)


def _fits(call: Callable[..., object], *args: object) -> bool:
    """Run ``call``; False when it failed for want of space."""
    try:
        call(*args)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False
    return True


@contextmanager
def small_disk(size_mb: int, inodes: int = 4096) -> Iterator[SmallDisk]:
    """A tmpfs of ``size_mb`` and ``inodes`` mounted on a fresh directory; unmounted and
    removed at the end."""
    if os.geteuid() != 0:
        raise PermissionError("mounting a tmpfs for the disk-full test needs root")
    path = Path(tempfile.mkdtemp(prefix="sandboxd-disk-"))
    options = f"size={size_mb}m,nr_inodes={inodes},mode=0755"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
