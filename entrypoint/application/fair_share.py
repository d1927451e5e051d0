"""Fair shares of running executions between API keys, and the per-chat turn before them.

The slots of SandboxApi bound how many chats may have executions in flight (past them: 429). On
a small host the bottleneck comes long before those slots run out: the CPU, which every running
execution shares, so a key that runs twice as many chats gets twice the throughput and the other
key's latency grows with the flood's. FairShare evens that out while several keys are active:

- A key alone may run as many executions as its slots allow.
- While other keys have executions in flight, or had one finish within ``recent_s`` (1 s), a
  key may run at most ``max(floor, the busiest other key's running count)`` at once. Its further
  executions wait, on the event loop, holding nothing (no thread, no lock, no slot), and start
  as the key's own running ones finish (or when the other keys' ``recent_s`` is up). A key that
  floods is thus held to the share of the busiest other key, never below ``floor``; one that
  asks for little is never held back. The ``recent_s`` memory matters for the usual
  well-behaved key, whose chats send a message now and then: between its messages it has
  nothing running, and without the memory the flood would be uncapped then and fill the host
  again before the next message (measured: good p99 2.2-3.6x its unloaded p99 with floor 2 and
  no memory, 1.3-1.7x with floor 1 and the memory).
- When room appears, the waiting key with the fewest running executions goes first (ties: in
  arrival order), so a freed place goes to whoever has least.

ChatTurns keeps one chat's messages in arrival order within the process before they reach the
fair share: only a chat's oldest message waits for (and then holds) a running place, the others
wait for their turn without holding one. Across processes the chat's lock still orders them.

Both are touched only on the event loop thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from uuid import UUID


class FairShare:
    def __init__(
        self, floor: int, recent_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if floor < 1:
            raise ValueError("floor must be at least 1")
        if recent_s < 0:
            raise ValueError("recent_s must not be negative")
        self._floor = floor
        self._recent_s = recent_s
        self._clock = clock
        self._running: Counter[str] = Counter()
        self._waiting: deque[tuple[str, asyncio.Future[None]]] = deque()
        # Key -> when its last execution finished, for keys with none running now.
        self._last_seen: dict[str, float] = {}
        self._regrant: asyncio.TimerHandle | None = None

    @property
    def running(self) -> int:
        return sum(self._running.values())

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def running_of(self, key: str) -> int:
        return self._running[key]

    def try_acquire(self, key: str) -> bool:
        """Take a running place at once if one is free for ``key`` (then ``release`` it)."""
        if not self._waiting and self._may_run(key):
            self._start(key)
            return True
        return False

    def release(self, key: str) -> None:
        self._release(key)

    @asynccontextmanager
    async def place(self, key: str) -> AsyncIterator[None]:
        """Hold a running place for ``key`` while the block runs."""
        await self._acquire(key)
        try:
            yield
        finally:
            self._release(key)

    def _cap(self, key: str) -> int | None:
        """How many ``key`` may run now; None: no cap (no other key is active)."""
        others = [count for other, count in self._running.items() if other != key and count]
        others += [1 for other, _ in self._waiting if other != key]
        if not others and self._last_seen and self._recently_seen_other(key):
            others.append(1)
        if not others:
            return None
        return max(self._floor, *others)

    def _start(self, key: str) -> None:
        self._running[key] += 1
        self._last_seen.pop(key, None)  # its running count speaks for it now

    def _regrant_when_recent_expire(self) -> None:
        """Waiters held back only by a recently seen key must not wait for a release that may
        never come (their own key has none running): look again when that key's time is up."""
        if not self._waiting or self._regrant is not None:
            return
        self._forget_before(self._clock() - self._recent_s)
        if not self._last_seen:
            return
        delay = min(self._last_seen.values()) + self._recent_s - self._clock()

        def regrant() -> None:
            self._regrant = None
            self._grant()

        self._regrant = asyncio.get_running_loop().call_later(max(0.0, delay) + 0.001, regrant)

    def _recently_seen_other(self, key: str) -> bool:
        self._forget_before(self._clock() - self._recent_s)
        return any(other != key for other in self._last_seen)

    def _forget_before(self, horizon: float) -> None:
        for other in [other for other, seen in self._last_seen.items() if seen < horizon]:
            del self._last_seen[other]

    def _may_run(self, key: str) -> bool:
        cap = self._cap(key)
        return cap is None or self._running[key] < cap

    async def _acquire(self, key: str) -> None:
        if self.try_acquire(key):
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, turn))
        self._grant()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(key)  # granted in the same moment: give it back
            else:
                self._waiting.remove((key, turn))
                self._grant()
            raise

    def _release(self, key: str) -> None:
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]
            if self._recent_s:
                self._last_seen[key] = self._clock()
        self._grant()

    def _grant(self) -> None:
        """Start waiters while any may run: the one whose key runs fewest first."""
        while True:
            candidates = [
                (self._running[key], index)
                for index, (key, turn) in enumerate(self._waiting)
                if not turn.done() and self._may_run(key)
            ]
            if not candidates:
                self._regrant_when_recent_expire()
                return
            _, index = min(candidates)
            key, turn = self._waiting[index]
            del self._waiting[index]
            self._start(key)
            turn.set_result(None)


class ChatTurns:
    """One chat's messages one at a time, in arrival order (within this process)."""

    def __init__(self) -> None:
        # Per chat: its turn holder first, then the waiting ones. A holder that never waited
        # (``try_take``) is a plain token; waiters are futures.
        self._queues: dict[UUID, deque[object]] = {}

    def try_take(self, chat_id: UUID) -> object | None:
        """The chat's turn at once if nobody has it (a token for ``leave``), else None."""
        if chat_id in self._queues:
            return None
        token = object()
        self._queues[chat_id] = deque([token])
        return token

    @asynccontextmanager
    async def turn(self, chat_id: UUID) -> AsyncIterator[None]:
        queue = self._queues.setdefault(chat_id, deque())
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(mine)
        if queue[0] is mine:
            mine.set_result(None)
        try:
            await mine
            yield
        finally:
            self.leave(chat_id, mine)

    def leave(self, chat_id: UUID, mine: object) -> None:
        queue = self._queues[chat_id]
        was_first = queue[0] is mine
        queue.remove(mine)
        if not queue:
            del self._queues[chat_id]
            return
        following = queue[0]
        if was_first and isinstance(following, asyncio.Future) and not following.done():
            # (A cancelled next one passes the turn on from its own exit.)
            following.set_result(None)
