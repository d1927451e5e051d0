"""Per-chat lifecycle lock within one process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID


@dataclass
class _ChatQueue:
    """A ticket lock: waiters are served strictly in the order they asked."""

    turn: threading.Condition
    next_ticket: int = 0
    serving: int = 0
    users: int = 0  # holders + waiters; the entry is dropped when it reaches zero


class ProcessLocalSandboxLifecycleLocker:
    """One FIFO lock per chat, for callers in this process.

    A plain threading.Lock wakes an arbitrary waiter; chat messages must run in the order they
    arrived, so this hands out tickets. Entries for chats nobody holds or waits for are removed,
    so the table does not grow with every chat ever seen. Not reentrant.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._queues: dict[UUID, _ChatQueue] = {}

    @contextmanager
    def lock(self, chat_id: UUID) -> Iterator[None]:
        # The ticket is taken on __enter__, not when lock() is called: arrival means entering.
        with self._mutex:
            queue = self._queues.get(chat_id)
            if queue is None:
                queue = _ChatQueue(turn=threading.Condition(self._mutex))
                self._queues[chat_id] = queue
            ticket = queue.next_ticket
            queue.next_ticket += 1
            queue.users += 1
            while queue.serving != ticket:
                queue.turn.wait()
        try:
            yield
        finally:
            with self._mutex:
                queue.serving += 1
                queue.users -= 1
                if queue.users == 0:
                    del self._queues[chat_id]
                else:
                    queue.turn.notify_all()

    def held_chat_count(self) -> int:
        """Chats with a holder or waiter right now (for tests and metrics)."""
        with self._mutex:
            return len(self._queues)
