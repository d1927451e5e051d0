"""The bookkeeping of one warm pool's members: which are idle, starting, owned and allocated.

Every count the pool decides on (how many to start, whether a booted member is kept, which
member a claim gets) is read and changed here, under one lock, so a decision and the change it
leads to are one step. Nothing here starts, stops or waits for a sandbox.

- ``idle``: booted, agent-ready, not given to anyone; claimed from the front.
- ``pending``: being started by a replenish worker.
- ``owned``: session ids the pool answers for (pending, idle, or claimed but not yet recorded):
  reconciliation leaves them alone.
- ``allocated``: handed to a chat; they count toward the pool's total until the chat's session
  ends (``forget``).

The host's budget (usecase/pool_budget.py) is kept beside this, not in it: a reservation the
budget refuses is handed back with ``unreserve`` and counted as ``replenish_capped``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID, uuid4

from domain.pool import PoolCapacity
from domain.sandbox import SandboxSession


@dataclass
class PoolCounters:
    """Totals since start (the metrics read them)."""

    claimed: int = 0
    missed: int = 0
    replenished: int = 0
    replenish_failures: int = 0
    health_failures: int = 0
    replenish_capped: int = 0  # starts refused (or members dropped) for the host's budget
    evicted: int = 0  # idle members destroyed to admit a chat at the host's cap


@dataclass(frozen=True)
class MemberCounts:
    idle: int
    allocated: int


class PoolMembers:
    def __init__(self, capacity: PoolCapacity) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._idle: deque[SandboxSession] = deque()
        self._pending = 0
        self._owned: set[UUID] = set()
        self._allocated: set[UUID] = set()
        self._handed: dict[UUID, SandboxSession] = {}  # taken, record not yet saved
        self._closed = False
        self.counters = PoolCounters()

    # --- capacity -------------------------------------------------------------------------

    def _wanted_idle(self) -> int:
        return 0 if self._closed else self._capacity.wanted_idle(len(self._allocated))

    def _deficit(self) -> int:
        return max(0, self._wanted_idle() - len(self._idle) - self._pending)

    def refill_wanted(self) -> int:
        """How many members to start now: the deficit, when idle fell below the buffer (or the
        total below the minimum); 0 otherwise."""
        with self._lock:
            if self._closed or not self._capacity.needs_refill(
                len(self._idle) + self._pending, len(self._allocated)
            ):
                return 0
            return self._deficit()

    def resize(self, capacity: PoolCapacity) -> list[SandboxSession]:
        """Take a new capacity; returns the idle members now surplus (removed, to destroy)."""
        with self._lock:
            self._capacity = capacity
            surplus = []
            while len(self._idle) > self._wanted_idle():
                surplus.append(self._idle.pop())
            return surplus

    # --- starting members -----------------------------------------------------------------

    def reserve(self) -> UUID | None:
        """A session id for one more member, counted as pending; None when none is needed."""
        with self._lock:
            if self._deficit() == 0:
                return None
            member_id = uuid4()
            self._pending += 1
            self._owned.add(member_id)
            return member_id

    def abandon(self, member_id: UUID) -> None:
        """The start of a reserved member failed."""
        with self._lock:
            self._pending -= 1
            self._owned.discard(member_id)
            self.counters.replenish_failures += 1

    def unreserve(self, member_id: UUID) -> None:
        """A reserved member gets no room in the host's budget: not started, or dropped."""
        with self._lock:
            self._pending -= 1
            self._owned.discard(member_id)
            self.counters.replenish_capped += 1

    def admit(self, member: SandboxSession) -> bool:
        """A reserved member booted: keep it idle, or False when the pool was closed or shrunk
        meanwhile (the caller destroys it)."""
        with self._lock:
            self._pending -= 1
            if len(self._idle) >= self._wanted_idle():
                return False
            self._idle.append(member)
            self.counters.replenished += 1
            return True

    # --- handing out ----------------------------------------------------------------------

    def take(self) -> SandboxSession | None:
        """The oldest idle member, now allocated; None (a miss) when there is none."""
        with self._lock:
            if self._closed or not self._idle:
                self.counters.missed += 1
                return None
            member = self._idle.popleft()
            self._allocated.add(member.session_id)
            self._handed[member.session_id] = member
            self.counters.claimed += 1
            return member

    def give_back(self, session_id: UUID) -> SandboxSession | None:
        """A taken member whose record was never saved returns to the front of the idle queue;
        returned (to destroy) when the pool closed or shrank meanwhile; None if not ours."""
        with self._lock:
            member = self._handed.pop(session_id, None)
            if member is None:
                return None
            self._allocated.discard(session_id)
            self.counters.claimed -= 1
            if len(self._idle) >= self._wanted_idle():
                return member
            self._idle.appendleft(member)
            return None

    def untake(self, member: SandboxSession) -> None:
        """A taken member could not be handed over: it counts as a miss after all."""
        with self._lock:
            self._handed.pop(member.session_id, None)
            self._allocated.discard(member.session_id)
            self.counters.claimed -= 1
            self.counters.missed += 1

    def remove_idle(self, member: SandboxSession) -> bool:
        """Take an idle member out (it failed its health check); False when it was claimed."""
        with self._lock:
            try:
                self._idle.remove(member)
            except ValueError:
                return False
            self.counters.health_failures += 1
            return True

    def evict(self) -> SandboxSession | None:
        """The newest idle member, removed (to destroy) to make room for a chat; None if none."""
        with self._lock:
            if not self._idle:
                return None
            self.counters.evicted += 1
            return self._idle.pop()

    def idle(self) -> list[SandboxSession]:
        with self._lock:
            return list(self._idle)

    # --- ownership ------------------------------------------------------------------------

    def owns(self, session_id: UUID) -> bool:
        with self._lock:
            return session_id in self._owned

    def disown(self, session_id: UUID) -> None:
        """The member's session record is saved (it is a chat's now), or the member is gone."""
        with self._lock:
            self._owned.discard(session_id)
            self._handed.pop(session_id, None)

    def settled_allocations(self) -> list[UUID]:
        """Allocated members whose chat record exists (no longer owned by the pool)."""
        with self._lock:
            return list(self._allocated - self._owned)

    def forget(self, session_ids: Iterable[UUID]) -> None:
        """Allocated members whose chat session ended no longer count toward the total."""
        with self._lock:
            self._allocated.difference_update(session_ids)

    def counts(self) -> MemberCounts:
        with self._lock:
            return MemberCounts(idle=len(self._idle), allocated=len(self._allocated))

    def close(self) -> list[SandboxSession]:
        """Start nothing more; returns the idle members (removed, to destroy)."""
        with self._lock:
            self._closed = True
            members = list(self._idle)
            self._idle.clear()
            return members
