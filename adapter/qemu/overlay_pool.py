"""A pool of qcow2 overlays created ahead of need, one queue per base image.

Creating an overlay (``qemu-img create``) costs tens of milliseconds of process start and disk
I/O on a VM's critical path; handing out a ready one is a hard link and an unlink in one
directory tree. Rules:
- ``start(bases)`` begins filling (a background thread); starting twice is an error, ``stop``
  twice is safe, and start after stop works (the pool is empty again then).
- ``acquire(base, target)`` before ``start`` is an error. It moves a pooled overlay of that base
  to ``target`` (atomically, refusing to replace: FileExistsError when ``target`` exists), or
  creates one there on demand when the queue is empty, the pool is disabled (size 0), its
  directory could not be created, or the move failed.
- ``acquirer(base)`` is ``acquire`` for a runtime whose VMs all boot over ``base``: the pool is
  (re)started for that base on first use and when the base changes (a rebuilt image); None
  when the pool is disabled.
- ``stats()`` counts overlays handed out from the pool and created on demand.
The pool directory must be on the same filesystem as the targets (the VMs' directory), or every
move fails over to on-demand creation.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from domain.errors import RuntimeUnavailableError
from domain.pool import pool_size_for
from usecase.ports import Logger

OverlayCreator = Callable[[Path, Path], None]


def qemu_img_overlay(base: Path, target: Path) -> None:
    """Create a qcow2 overlay at ``target`` backed by ``base`` (qemu-img)."""
    try:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
             str(target)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise RuntimeUnavailableError(f"qemu-img create failed: {detail.strip()}") from exc


@dataclass(frozen=True)
class OverlayPoolStats:
    pooled: int
    on_demand: int


class OverlayPool:
    def __init__(
        self,
        pool_dir: Path,
        size: int,
        logger: Logger,
        create: OverlayCreator = qemu_img_overlay,
    ) -> None:
        self._dir = pool_dir
        self._size = size
        self._logger = logger
        self._create = create
        self._lock = threading.Condition()
        self._ready: dict[Path, deque[Path]] = {}
        self._started = False
        self._usable = False
        self._thread: threading.Thread | None = None
        self._pooled = 0
        self._on_demand = 0
        self._restart_lock = threading.Lock()

    @classmethod
    def by_ratio(cls, pool_dir: Path, capacity: int, ratio: float, logger: Logger) -> OverlayPool:
        """Size ``max(1, int(capacity * ratio))`` per base image; ratio 0 disables the pool."""
        return cls(pool_dir, pool_size_for(capacity, ratio), logger)

    @property
    def size(self) -> int:
        return self._size

    def start(self, bases: list[Path]) -> None:
        with self._lock:
            if self._started:
                raise RuntimeError("the overlay pool is already started")
            self._started = True
            self._ready = {base: deque() for base in bases}
            self._usable = self._size > 0 and self._make_dir()
            if not self._usable:
                return
            self._thread = threading.Thread(target=self._fill, name="overlay-pool", daemon=True)
        self._thread.start()

    def _make_dir(self) -> bool:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._logger.warning(
                "overlay_pool_disabled", {"dir": str(self._dir), "error": type(exc).__name__}
            )
            return False
        return True

    def acquirer(self, base: Path) -> OverlayCreator | None:
        if self._size == 0:
            return None
        with self._restart_lock:
            with self._lock:
                current = list(self._ready) if self._started else []
            if current != [base]:
                self.stop()  # a rebuilt image: the old base's overlays are useless
                self.start([base])
        return self.acquire

    def stop(self) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            self._lock.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._lock:
            leftovers = [path for queue in self._ready.values() for path in queue]
            self._ready = {}
        for path in leftovers:
            path.unlink(missing_ok=True)

    def stats(self) -> OverlayPoolStats:
        with self._lock:
            return OverlayPoolStats(pooled=self._pooled, on_demand=self._on_demand)

    def available(self, base: Path) -> int:
        with self._lock:
            return len(self._ready.get(base, ()))

    def acquire(self, base: Path, target: Path) -> None:
        with self._lock:
            if not self._started:
                raise RuntimeError("acquire before start: the overlay pool is not running")
            if target.exists():
                raise FileExistsError(str(target))
            queue = self._ready.get(base)
            pooled = queue.popleft() if queue else None
            self._lock.notify_all()  # the filler replaces what was taken
        if pooled is not None and self._move(pooled, target):
            with self._lock:
                self._pooled += 1
            return
        self._create(base, target)
        with self._lock:
            self._on_demand += 1

    def _move(self, source: Path, target: Path) -> bool:
        """Link then unlink: atomic, and never replaces an existing target."""
        try:
            os.link(source, target)
        except FileExistsError:
            source.unlink(missing_ok=True)
            raise
        except OSError as exc:
            source.unlink(missing_ok=True)
            self._logger.warning(
                "overlay_pool_move_failed", {"target": str(target), "error": type(exc).__name__}
            )
            return False
        source.unlink(missing_ok=True)
        return True

    def _fill(self) -> None:
        while True:
            with self._lock:
                base = self._next_base()
                while self._started and base is None:
                    self._lock.wait()
                    base = self._next_base()
                if not self._started or base is None:
                    return
            path = self._dir / _base_tag(base) / f"{uuid.uuid4().hex}.qcow2"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._create(base, path)
            except (OSError, RuntimeUnavailableError) as exc:
                self._logger.error(
                    "overlay_pool_create_failed", {"base": str(base), "error": type(exc).__name__}
                )
                path.unlink(missing_ok=True)
                with self._lock:
                    # Do not spin on a broken base: wait for the next acquire or stop.
                    self._lock.wait()
                continue
            with self._lock:
                queue = self._ready.get(base)
                if self._started and queue is not None:
                    queue.append(path)
                    continue
            path.unlink(missing_ok=True)  # stopped meanwhile

    def _next_base(self) -> Path | None:
        """A base image whose queue is short (caller holds the lock)."""
        for base, queue in self._ready.items():
            if len(queue) < self._size:
                return base
        return None


def _base_tag(base: Path) -> str:
    return hashlib.sha256(str(base).encode()).hexdigest()[:16]
