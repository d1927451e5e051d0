"""Warm pools: agent-ready sandboxes started ahead of need, claimed by new chats in O(1).

Binding. A member is created through the ordinary runtime port with a fresh session id that
also serves as its placeholder chat id (runtime labels cannot change after create). On claim the
member keeps its session id, which becomes the chat's session id: the session record is what
binds the sandbox to the chat, and reconciliation trusts the record (it looks a listed object up
by its session id when its chat label matches no record). Until the record is saved the pool
still ``owns`` the member, so reconciliation never takes a member for an orphan. A member is
removed from the idle queue under the pool's lock before it is returned: it is handed out once
and never comes back (a chat's sandbox is destroyed with its session, never returned).

Replenishment runs on background threads under a per-pool semaphore (1 for small pools, a capped
number for large ones), released on failure and on cancellation (``close``). A worker re-checks
the deficit after taking the semaphore and does nothing when the pool filled meanwhile; a member
that finished booting after the pool was closed or shrunk is destroyed, not kept.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from uuid import UUID, uuid4

from domain.pool import PoolDefinition, PoolStatus
from domain.sandbox import SandboxSession, SandboxStatus
from usecase.ports import (
    Clock,
    Logger,
    SandboxHealthProbe,
    SandboxRebinder,
    SandboxRuntime,
    SandboxSessionRepository,
)

# Idle members have no record and no deadline of their own; this keeps them out of any
# expiry logic that might read the runtime's view.
_MEMBER_LIFETIME = timedelta(days=3650)
_LARGE_POOL = 8
_MAX_PARALLEL = 4


def replenish_parallelism(buffer_max: int) -> int:
    """One replenish at a time for small pools, a capped number in parallel for large ones."""
    if buffer_max < _LARGE_POOL:
        return 1
    return min(_MAX_PARALLEL, buffer_max // _LARGE_POOL + 1)


@dataclass
class PoolCounters:
    claimed: int = 0
    missed: int = 0
    replenished: int = 0
    replenish_failures: int = 0
    health_failures: int = 0


@dataclass
class _State:
    idle: deque[SandboxSession] = field(default_factory=deque)
    pending: int = 0
    owned: set[UUID] = field(default_factory=set)
    allocated: set[UUID] = field(default_factory=set)
    closed: bool = False


class WarmPool:
    """One pool: its idle members, its replenishment and its health check."""

    def __init__(
        self,
        definition: PoolDefinition,
        runtime: SandboxRuntime,
        repository: SandboxSessionRepository,
        clock: Clock,
        logger: Logger,
        health: SandboxHealthProbe | None = None,
        health_timeout_s: float = 1.0,
        rebinder: SandboxRebinder | None = None,
    ) -> None:
        self._definition = definition
        self._rebinder = rebinder
        self._runtime = runtime
        self._repository = repository
        self._clock = clock
        self._logger = logger
        self._health = health
        self._health_timeout_s = health_timeout_s
        self._lock = threading.Lock()
        self._state = _State()
        self._semaphore = threading.BoundedSemaphore(
            replenish_parallelism(definition.capacity.buffer_max)
        )
        self._workers: set[threading.Thread] = set()
        self.counters = PoolCounters()

    @property
    def definition(self) -> PoolDefinition:
        return self._definition

    def redefine(self, definition: PoolDefinition) -> None:
        """Take a new capacity; surplus idle members are destroyed, a deficit is refilled."""
        with self._lock:
            self._definition = definition
            surplus: list[SandboxSession] = []
            wanted = definition.capacity.wanted_idle(len(self._state.allocated))
            while len(self._state.idle) > wanted:
                surplus.append(self._state.idle.pop())
        for member in surplus:
            self._destroy(member, "pool_member_surplus")
        self.request_refill()

    # --- claiming -------------------------------------------------------------------------

    def claim(
        self, *, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession | None:
        with self._lock:
            if self._state.closed or not self._state.idle:
                self.counters.missed += 1
                member = None
            else:
                member = self._state.idle.popleft()
                self._state.allocated.add(member.session_id)
                self.counters.claimed += 1
        self.request_refill()
        if member is None:
            return None
        bound = replace(
            member,
            chat_id=chat_id,
            created_at=created_at,
            expires_at=expires_at,
            status=SandboxStatus.RUNNING,
        )
        if self._rebinder is not None:
            try:
                self._rebinder.rebind(bound)
            except Exception as exc:
                # Never hand out a sandbox whose handover failed; the chat gets one on demand.
                self._logger.warning(
                    "pool_rebind_failed",
                    {"pool": self._definition.name, "error": type(exc).__name__},
                )
                with self._lock:
                    self._state.allocated.discard(member.session_id)
                    self.counters.claimed -= 1
                    self.counters.missed += 1
                self._destroy(member, "pool_member_removed")
                return None
        return bound

    def settle(self, session_id: UUID) -> None:
        with self._lock:
            self._state.owned.discard(session_id)

    def owns(self, session_id: UUID) -> bool:
        with self._lock:
            return session_id in self._state.owned

    def status(self) -> PoolStatus:
        self._forget_finished()
        with self._lock:
            idle = len(self._state.idle)
            allocated = len(self._state.allocated)
            return PoolStatus(
                total=idle + allocated,
                allocated=allocated,
                available=idle,
                revision=self._definition.revision,
            )

    def _forget_finished(self) -> None:
        """Allocated members whose chat session ended no longer count toward the total."""
        with self._lock:
            allocated = list(self._state.allocated - self._state.owned)
        gone = []
        for session_id in allocated:
            record = self._repository.get(session_id)
            if record is None or record.status is not SandboxStatus.RUNNING:
                gone.append(session_id)
        with self._lock:
            self._state.allocated.difference_update(gone)

    # --- replenishment --------------------------------------------------------------------

    def _deficit(self) -> int:
        """Members to start now (caller holds the lock)."""
        state = self._state
        if state.closed:
            return 0
        capacity = self._definition.capacity
        allocated = len(state.allocated)
        have = len(state.idle) + state.pending
        return max(0, capacity.wanted_idle(allocated) - have)

    def request_refill(self) -> None:
        """Start background workers when the pool is below its buffer (or its minimum)."""
        with self._lock:
            state = self._state
            capacity = self._definition.capacity
            if state.closed or not capacity.needs_refill(
                len(state.idle) + state.pending, len(state.allocated)
            ):
                return
            workers = min(self._deficit(), replenish_parallelism(capacity.buffer_max))
            started = []
            for _ in range(workers):
                thread = threading.Thread(
                    target=self._replenish, name=f"pool-{self._definition.name}", daemon=True
                )
                self._workers.add(thread)
                started.append(thread)
        for thread in started:
            thread.start()

    def fill(self) -> None:
        """Replenish on the caller's thread until the pool is full (start-up, tests)."""
        self._replenish()

    def _replenish(self) -> None:
        try:
            while self._replenish_one():
                pass
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _replenish_one(self) -> bool:
        """Start one member; False when there is nothing (more) to do or it failed."""
        with self._semaphore:
            with self._lock:
                if self._deficit() == 0:
                    return False
                member_id = uuid4()
                self._state.pending += 1
                self._state.owned.add(member_id)
            now = self._clock.now()
            try:
                member = self._runtime.create(
                    session_id=member_id,
                    chat_id=member_id,
                    created_at=now,
                    expires_at=now + _MEMBER_LIFETIME,
                )
            except Exception as exc:
                with self._lock:
                    self._state.pending -= 1
                    self._state.owned.discard(member_id)
                    self.counters.replenish_failures += 1
                self._logger.error(
                    "pool_replenish_failed",
                    {"pool": self._definition.name, "error": type(exc).__name__},
                )
                return False
            with self._lock:
                self._state.pending -= 1
                keep = not self._state.closed and len(self._state.idle) < (
                    self._definition.capacity.wanted_idle(len(self._state.allocated))
                )
                if keep:
                    self._state.idle.append(member)
                    self.counters.replenished += 1
            if not keep:
                # Booted after the pool was closed or shrunk: nobody will ever claim it.
                self._destroy(member, "pool_member_discarded")
                return False
            self._logger.info(
                "pool_member_ready",
                {"pool": self._definition.name, "container_id": member.container_id},
            )
            return True

    def _destroy(self, member: SandboxSession, event: str) -> None:
        try:
            self._runtime.stop(member.container_id)
        except Exception as exc:
            # Reconciliation removes it later: it is no longer owned by the pool.
            self._logger.error(
                "pool_member_stop_failed",
                {"container_id": member.container_id, "error": type(exc).__name__},
            )
        with self._lock:
            self._state.owned.discard(member.session_id)
        self._logger.info(
            event, {"pool": self._definition.name, "container_id": member.container_id}
        )

    # --- health ---------------------------------------------------------------------------

    def check_health(self) -> int:
        """Ping every idle member; destroy those that do not answer, then refill.

        Returns how many were destroyed.
        """
        if self._health is None:
            return 0
        with self._lock:
            members = list(self._state.idle)
        unhealthy = 0
        for member in members:
            if self._health.ping(member.container_id, self._health_timeout_s):
                continue
            with self._lock:
                try:
                    self._state.idle.remove(member)
                except ValueError:
                    continue  # claimed meanwhile: the chat's own path handles a dead sandbox
                self.counters.health_failures += 1
            unhealthy += 1
            self._logger.warning(
                "pool_member_unhealthy",
                {"pool": self._definition.name, "container_id": member.container_id},
            )
            self._destroy(member, "pool_member_removed")
        self.request_refill()
        return unhealthy

    # --- shutdown -------------------------------------------------------------------------

    def close(self, wait_s: float | None = None) -> None:
        """Cancel replenishment and destroy the idle members.

        A member still booting is destroyed by its worker when it comes up; ``wait_s`` joins
        the workers for that long (None: do not wait).
        """
        with self._lock:
            self._state.closed = True
            members = list(self._state.idle)
            self._state.idle.clear()
            workers = list(self._workers)
        for member in members:
            self._destroy(member, "pool_member_drained")
        if wait_s is not None:
            for worker in workers:
                worker.join(wait_s)


class WarmPools:
    """Every pool of this process, keyed by environment; the provisioner's WarmSandboxSource."""

    def __init__(
        self,
        runtime: SandboxRuntime,
        repository: SandboxSessionRepository,
        clock: Clock,
        logger: Logger,
        health: SandboxHealthProbe | None = None,
        health_timeout_s: float = 1.0,
        rebinder: SandboxRebinder | None = None,
    ) -> None:
        self._rebinder = rebinder
        self._runtime = runtime
        self._repository = repository
        self._clock = clock
        self._logger = logger
        self._health = health
        self._health_timeout_s = health_timeout_s
        self._lock = threading.Lock()
        self._pools: dict[str, WarmPool] = {}
        self._by_environment: dict[tuple[str, tuple[str, ...]], WarmPool] = {}
        self.on_demand = 0

    def pools(self) -> list[WarmPool]:
        with self._lock:
            return list(self._pools.values())

    def get(self, name: str) -> WarmPool | None:
        with self._lock:
            return self._pools.get(name)

    def apply(self, definitions: Iterable[PoolDefinition]) -> None:
        """Make the running pools match the definitions (add, redefine, close the rest).

        Only base-environment pools (no packages) run: the runtime port creates base sandboxes,
        so a package pool would hand out sandboxes without its packages. Package pools stay
        stored (status zero) until creation per environment reaches the runtime port.
        """
        wanted = {d.name: d for d in definitions if not d.packages}
        started: list[WarmPool] = []
        redefined: list[tuple[WarmPool, PoolDefinition]] = []
        closed: list[WarmPool] = []
        with self._lock:
            for name, pool in list(self._pools.items()):
                definition = wanted.get(name)
                if definition is None or definition.environment_key != (
                    pool.definition.environment_key
                ):
                    closed.append(self._pools.pop(name))
                elif definition.revision != pool.definition.revision:
                    redefined.append((pool, definition))
            for name, definition in wanted.items():
                if name not in self._pools:
                    pool = WarmPool(
                        definition,
                        self._runtime,
                        self._repository,
                        self._clock,
                        self._logger,
                        self._health,
                        self._health_timeout_s,
                        self._rebinder,
                    )
                    self._pools[name] = pool
                    started.append(pool)
            self._by_environment = {
                pool.definition.environment_key: pool for pool in self._pools.values()
            }
        for pool in closed:
            pool.close()
        for pool, definition in redefined:
            pool.redefine(definition)
        for pool in started:
            pool.request_refill()

    def claim(
        self,
        *,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
        packages: tuple[str, ...] = (),
        language: str = "python",
    ) -> SandboxSession | None:
        with self._lock:
            pool = self._by_environment.get((language, tuple(sorted(packages))))
        session = (
            None
            if pool is None
            else pool.claim(chat_id=chat_id, created_at=created_at, expires_at=expires_at)
        )
        if session is None:
            with self._lock:
                self.on_demand += 1
        return session

    def settle(self, session_id: UUID) -> None:
        for pool in self.pools():
            pool.settle(session_id)

    def owns(self, session_id: UUID) -> bool:
        return any(pool.owns(session_id) for pool in self.pools())

    def check_health(self) -> int:
        return sum(pool.check_health() for pool in self.pools())

    def close(self, wait_s: float | None = None) -> None:
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
            self._by_environment.clear()
        for pool in pools:
            pool.close(wait_s)
