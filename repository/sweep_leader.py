"""Leader election for the expiry sweep when everything runs in one process.

Implements ``usecase.ports.SweepLeader``, as do the file and PostgreSQL leader locks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ProcessLocalSweepLeaderLock:
    """The in-process counterpart of the file and PostgreSQL leader locks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextmanager
    def try_lead(self) -> Iterator[bool]:
        """Yield True while this caller is the only sweeper, False (at once) if another is."""
        if not self._lock.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            self._lock.release()
