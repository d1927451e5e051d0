"""Cross-process chat lock for the embedded SQLite setup: one lock file per chat (flock).

Holds between every process on one host that uses the same lock directory (the directory beside
the SQLite file, ``<data_dir>/locks`` by default). The kernel drops a flock when its process
dies, so a crashed holder never wedges a chat.
"""

from __future__ import annotations

import copy
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

from domain.errors import LockTimeoutError, RepositoryUnavailableError, StorageFullError
from repository.chat_queue import TimedFifoChatLock
from repository.database import is_storage_full

_POLL_FIRST_S = 0.001
_POLL_MAX_S = 0.02


def _open_lock_file(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            # The directory is made on first use only: this runs once per execute.
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, flags, 0o600)
    except OSError as error:
        kind = StorageFullError if is_storage_full(error) else RepositoryUnavailableError
        raise kind(f"cannot open lock file {path}: {error}") from error


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def flock_until(path: Path, deadline: float) -> int | None:
    """Open ``path`` and take an exclusive flock on it, polling until ``deadline``.

    Returns the descriptor that holds the lock (close it to release), or None on timeout. Each
    call has its own open file description, so two holders in one process exclude each other
    too. Polling, because flock has no timed wait; across processes the order is not FIFO.
    """
    fd = _open_lock_file(path)
    pause = _POLL_FIRST_S
    try:
        while not _try_flock(fd):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.close(fd)
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)
    except BaseException:
        os.close(fd)
        raise
    return fd


class FileSandboxLifecycleLocker:
    """Per-chat lock across processes on one host: FIFO within the process, then a flock.

    Lock files are never deleted: unlinking a file another process is about to lock would let
    two holders in at once. They are empty, one per chat ever locked.
    """

    def __init__(self, lock_dir: Path, timeout_s: float = 360.0) -> None:
        self._lock_dir = lock_dir
        self._timeout_s = timeout_s
        self._local = TimedFifoChatLock()

    @property
    def lock_dir(self) -> Path:
        return self._lock_dir

    def with_timeout(self, timeout_s: float) -> FileSandboxLifecycleLocker:
        """The same locks (one in-process queue) with another bound on the wait."""
        view = copy.copy(self)
        view._timeout_s = timeout_s
        return view

    @contextmanager
    def lock(self, chat_id: UUID) -> Iterator[None]:
        deadline = time.monotonic() + self._timeout_s
        self._local.acquire(chat_id, deadline)
        try:
            fd = flock_until(self._lock_dir / f"chat-{chat_id}.lock", deadline)
            if fd is None:
                raise LockTimeoutError(
                    f"chat {chat_id}: lock wait timed out after {self._timeout_s:g} s "
                    "(held by another process)"
                )
            try:
                yield
            finally:
                os.close(fd)  # closing the last descriptor releases the flock
        finally:
            self._local.release(chat_id)


class FileSweepLeaderLock:
    """ "One sweeper at a time" across the processes sharing a lock directory."""

    def __init__(self, lock_dir: Path) -> None:
        self._path = lock_dir / "sweep-leader.lock"

    @contextmanager
    def try_lead(self) -> Iterator[bool]:
        """Yield True while this caller is the only sweeper, False (at once) if another is."""
        fd = flock_until(self._path, deadline=time.monotonic())
        if fd is None:
            yield False
            return
        try:
            yield True
        finally:
            os.close(fd)
