"""A per-chat FIFO lock with a bounded wait, the in-process half of the cross-process lockers.

The file and PostgreSQL lockers first queue here, so within one process waiters are served
strictly in arrival order, and only one thread per chat at a time touches the file or the
database lock (one connection per waiting chat, not one per waiting request).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from uuid import UUID

from domain.errors import LockTimeoutError


@dataclass
class _Queue:
    held: bool = False
    waiters: deque[threading.Event] = field(default_factory=deque)


class TimedFifoChatLock:
    """acquire/release per chat; the lock is handed straight to the oldest waiter on release.

    A waiter that gives up removes itself, so a timeout never stalls the ones behind it. Entries
    for chats nobody holds or waits for are dropped. Not reentrant.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._queues: dict[UUID, _Queue] = {}

    def acquire(self, chat_id: UUID, deadline: float | None) -> None:
        """Wait until ``deadline`` (time.monotonic(); None: forever); LockTimeoutError past it."""
        with self._mutex:
            queue = self._queues.setdefault(chat_id, _Queue())
            if not queue.held and not queue.waiters:
                queue.held = True
                return
            turn = threading.Event()
            queue.waiters.append(turn)
        if turn.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            return
        with self._mutex:
            if turn.is_set():  # handed over between the timeout and taking the mutex
                return
            queue.waiters.remove(turn)
            if not queue.held and not queue.waiters:
                del self._queues[chat_id]
        raise LockTimeoutError(f"chat {chat_id}: lock wait timed out (other requests ahead)")

    def release(self, chat_id: UUID) -> None:
        with self._mutex:
            queue = self._queues[chat_id]
            if queue.waiters:
                queue.waiters.popleft().set()  # still held: ownership passes to that waiter
            else:
                del self._queues[chat_id]

    def queued(self, chat_id: UUID) -> int:
        """Holder plus waiters for one chat right now."""
        with self._mutex:
            queue = self._queues.get(chat_id)
            return 0 if queue is None else int(queue.held) + len(queue.waiters)

    def held_chat_count(self) -> int:
        with self._mutex:
            return len(self._queues)
