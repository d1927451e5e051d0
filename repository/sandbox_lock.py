"""Per-chat lifecycle lock within one process."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from repository.chat_queue import TimedFifoChatLock


class ProcessLocalSandboxLifecycleLocker:
    """One FIFO lock per chat, for callers in this process.

    A plain threading.Lock wakes an arbitrary waiter; chat messages must run in the order they
    arrived, so waiters queue (TimedFifoChatLock). Entries for chats nobody holds or waits for
    are removed, so the table does not grow with every chat ever seen. Not reentrant.
    ``timeout_s`` bounds the wait (LockTimeoutError past it); None waits as long as it takes.
    """

    def __init__(self, timeout_s: float | None = None) -> None:
        self._queue = TimedFifoChatLock()
        self._timeout_s = timeout_s

    @contextmanager
    def lock(self, chat_id: UUID) -> Iterator[None]:
        # Queued on __enter__, not when lock() is called: arrival means entering.
        deadline = None if self._timeout_s is None else time.monotonic() + self._timeout_s
        self._queue.acquire(chat_id, deadline)
        try:
            yield
        finally:
            self._queue.release(chat_id)

    def with_timeout(self, timeout_s: float) -> ProcessLocalSandboxLifecycleLocker:
        """The same locks (one queue) with another bound on the wait: the sweep's short try."""
        view = copy.copy(self)
        view._timeout_s = timeout_s
        return view

    def queued(self, chat_id: UUID) -> int:
        """Holder plus waiters for one chat right now (for tests and metrics)."""
        return self._queue.queued(chat_id)

    def held_chat_count(self) -> int:
        """Chats with a holder or waiter right now."""
        return self._queue.held_chat_count()
