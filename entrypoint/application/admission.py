"""Admission of executions, shared fairly between API keys, and the drain at shutdown.

- A chat with executions in flight holds one *slot* (``max_inflight`` in all): its further
  messages wait behind its lock in a *queue* of the same size, and do not take slots of their
  own, so a chat's backlog cannot crowd out other chats.
- One key's executions (running and queued) are capped at ``max_per_key``: a key that floods
  gets 429s while the remaining slots stay free for the other keys.

Not thread-safe by design: admit and release are called on the event loop thread only (the
release from a done callback), so plain counters do.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from uuid import UUID

from domain.errors import TooManyExecutionsError
from entrypoint.errors import ShuttingDownError
from entrypoint.metrics import ServiceMetrics
from usecase.ports import Logger


class ExecutionAdmission:
    def __init__(
        self,
        max_inflight: int,
        max_per_key: int | None,
        metrics: ServiceMetrics,
        logger: Logger,
    ) -> None:
        self.max_inflight = max_inflight
        self._max_per_key = max_per_key or max(1, max_inflight * 3 // 4)
        self._metrics = metrics
        self._logger = logger
        self.inflight = 0  # slots: chats with executions in flight
        self.queued = 0  # further executions waiting behind their chat's
        self._by_chat: Counter[UUID] = Counter()
        self._by_key: Counter[str] = Counter()
        self._draining = False
        self._idle: asyncio.Event | None = None

    def admit(self, chat_id: UUID, key: str) -> None:
        """Count one execution in, or raise (ShuttingDownError, TooManyExecutionsError)."""
        if self._draining:
            raise ShuttingDownError("the service is shutting down; retry on another replica")
        if self._by_key[key] >= self._max_per_key:
            raise TooManyExecutionsError(
                f"this API key has {self._by_key[key]} executions in flight, its limit is "
                f"{self._max_per_key}"
            )
        if self._by_chat[chat_id]:
            # Waits behind its chat's running execution: no slot of its own.
            if self.queued >= self.max_inflight:
                raise TooManyExecutionsError(
                    f"{self.queued} executions wait for their chat, the limit is "
                    f"{self.max_inflight}"
                )
            self.queued += 1
        else:
            if self.inflight >= self.max_inflight:
                raise TooManyExecutionsError(
                    f"{self.inflight} executions in flight, the limit is {self.max_inflight}"
                )
            self.inflight += 1
        self._by_chat[chat_id] += 1
        self._by_key[key] += 1
        self._metrics.executions_in_flight.set(self.inflight)

    def release(self, chat_id: UUID, key: str) -> None:
        self._by_key[key] -= 1
        if self._by_key[key] <= 0:
            del self._by_key[key]
        self._by_chat[chat_id] -= 1
        if self._by_chat[chat_id] > 0:
            self.queued -= 1  # the next waiter of this chat inherits its slot
        else:
            del self._by_chat[chat_id]
            self.inflight -= 1
        self._metrics.executions_in_flight.set(self.inflight)
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new executions and wait up to ``timeout_s`` for those in flight; True when
        none is left."""
        self._draining = True
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            self._logger.warning("drain_timed_out", {"in_flight": self.inflight})
            return False
        return True
