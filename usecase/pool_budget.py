"""The host's sandbox budget as the warm pools see it: chats first, pool members in what is left.

The operator caps live sandboxes on a node (SANDBOXD_MAX_SANDBOXES, ``Placement.max_sandboxes``)
from the host's memory. Pool members are sandboxes too, so on this node

    running chat sandboxes (RUNNING records) + every pool's starting and idle members <= cap.

A pool member holds room from the moment its start is reserved until it is destroyed or its
chat's record is saved (``release``; from then on the record counts it, so a claimed member is
never refused as a second sandbox: for a moment it is counted twice, never zero times).

Chats come first. ``SandboxProvisioner`` refuses a new chat only when RUNNING records reach the
cap, never because pools hold the room: a chat that claims a member takes the member's room; a
chat created on demand while pools fill the budget gets room by evicting idle members
(``WarmPools.make_room``), which are cheaper to lose than a refused chat (nobody's state is in
them). A member still booting when its room was taken is destroyed as soon as it is up
(``fits``), so the cap can be passed for the length of one boot, by at most the pools'
replenish parallelism, and never stays passed.

The count is per process: replicas sharing one node each budget their own members against the
shared records (run one pool-holding replica per node, or give each replica's pools a share).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from uuid import UUID

from usecase.ports import SandboxSessionRepository


@dataclass(frozen=True)
class Room:
    """A budget decision and the numbers it was made on (logged when a pool is capped)."""

    granted: bool
    running: int
    held: int
    limit: int | None


class HostBudget:
    """Room on this node for pool members; ``limit`` None: no cap (everything is granted)."""

    def __init__(
        self, repository: SandboxSessionRepository, node: str = "", limit: int | None = None
    ) -> None:
        self._repository = repository
        self._node = node
        self._limit = limit
        self._lock = threading.Lock()
        self._held: set[UUID] = set()

    @property
    def limit(self) -> int | None:
        return self._limit

    def held(self) -> int:
        with self._lock:
            return len(self._held)

    def hold(self, member_id: UUID) -> Room:
        """Hold room for one more member when the budget has it (the check and the hold are
        one step, so parallel replenishers of several pools cannot both take the last room)."""
        with self._lock:
            if self._limit is None:
                self._held.add(member_id)
                return Room(True, 0, len(self._held), None)
            running = self._repository.count_running(self._node)
            granted = running + len(self._held) < self._limit
            if granted:
                self._held.add(member_id)
            return Room(granted, running, len(self._held), self._limit)

    def release(self, member_id: UUID) -> None:
        """The member is gone, or its chat's record now counts it (idempotent)."""
        with self._lock:
            self._held.discard(member_id)

    def fits(self) -> bool:
        """Running sandboxes and held members are within the cap (a booted member re-checks)."""
        return self.excess() <= 0

    def excess(self, extra: int = 0) -> int:
        """By how much running sandboxes, held members and ``extra`` new ones pass the cap."""
        with self._lock:
            if self._limit is None or not self._held:
                return 0  # without members, the provisioner's own check is the whole story
            running = self._repository.count_running(self._node)
            return running + len(self._held) + extra - self._limit
