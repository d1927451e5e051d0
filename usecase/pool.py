"""Warm pools: agent-ready sandboxes started ahead of need, claimed by new chats in O(1).

Binding. A member is created with a fresh session id that also serves as its placeholder chat
id (runtime labels cannot change after create). On claim the member keeps its session id, which
becomes the chat's session id: the session record is what binds the sandbox to the chat, and
reconciliation trusts the record (it looks a listed object up by its session id when its chat
label matches no record). Until the record is saved the pool still ``owns`` the member, so
reconciliation never takes a member for an orphan. A member is removed from the idle queue under
the pool's lock before it is returned: it is handed out once and never comes back (a chat's
sandbox is destroyed with its session, never returned).

Environments. A pool serves one environment: the base one (no packages) or a package set. A
new chat is served from a pool only when it asks for exactly that environment (the packages a
session records, in their normalised form); any other set gets no pooled sandbox and is created
on demand. Several pools of one environment are tried by name. Package pools run only where the
runtime serves package environments; elsewhere they stay stored, with a zero status.

The host's cap. Pool members count against SANDBOXD_MAX_SANDBOXES with the chats' sandboxes;
every pool of the process shares one HostBudget (usecase/pool_budget.py, which says how chats
come first: a chat at the cap claims a member or evicts idle ones, it is never refused for them).

Bookkeeping lives in PoolMembers (usecase/pool_members.py), starting members in the Replenisher
(usecase/pool_replenish.py); this module claims, checks health, and keeps the pools in step
with their definitions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from domain.pool import PoolDefinition, PoolStatus
from domain.sandbox import SandboxSession, SandboxStatus
from usecase.environment import EnvironmentProvisioning
from usecase.pool_budget import HostBudget
from usecase.pool_members import PoolCounters, PoolMembers
from usecase.pool_replenish import (
    BaseMembers,
    EnvironmentMembers,
    MemberMaker,
    Replenisher,
    replenish_parallelism,
)
from usecase.ports import (
    Clock,
    Logger,
    SandboxHealthProbe,
    SandboxRebinder,
    SandboxRuntime,
    SandboxSessionRepository,
)


@dataclass(frozen=True)
class PoolServices:
    """What every pool of a process shares."""

    runtime: SandboxRuntime
    repository: SandboxSessionRepository
    clock: Clock
    logger: Logger
    health: SandboxHealthProbe | None = None
    health_timeout_s: float = 1.0
    rebinder: SandboxRebinder | None = None
    budget: HostBudget | None = None


# A claim's refill waits this long: starting a sandbox costs the host a burst of CPU (engine,
# runtime, a new interpreter), which would otherwise land exactly on the claiming chat's first
# execution (measured on a loaded 2-core host: the first result took several times longer).
REFILL_AFTER_CLAIM_S = 0.25


class WarmPool:
    """One pool: claiming its idle members, its health check, its capacity."""

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
        maker: MemberMaker | None = None,
        budget: HostBudget | None = None,
    ) -> None:
        """``budget``: the host's, shared by every pool of the process (None: uncapped)."""
        self._definition = definition
        self._budget = budget or HostBudget(repository)
        self._repository = repository
        self._logger = logger
        self._health = health
        self._health_timeout_s = health_timeout_s
        self._rebinder = rebinder
        self._members = PoolMembers(definition.capacity)
        self._replenisher = Replenisher(
            definition.name,
            self._members,
            maker or BaseMembers(runtime),
            runtime,
            clock,
            logger,
            replenish_parallelism(definition.capacity.buffer_max),
            self._budget,
        )

    @property
    def definition(self) -> PoolDefinition:
        return self._definition

    @property
    def counters(self) -> PoolCounters:
        return self._members.counters

    def redefine(self, definition: PoolDefinition) -> None:
        """Take a new capacity; surplus idle members are destroyed, a deficit is refilled."""
        self._definition = definition
        for member in self._members.resize(definition.capacity):
            self._replenisher.destroy(member, "pool_member_surplus")
        self.request_refill()

    def request_refill(self) -> None:
        self._replenisher.request()

    def fill(self) -> None:
        """Replenish on the caller's thread until the pool is full (start-up, tests)."""
        self._replenisher.fill()

    # --- claiming -------------------------------------------------------------------------

    def claim(
        self, *, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession | None:
        member = self._members.take()
        self._replenisher.request(REFILL_AFTER_CLAIM_S)
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
                self._members.untake(member)
                self._replenisher.destroy(member, "pool_member_removed")
                return None
        return bound

    def settle(self, session_id: UUID) -> None:
        self._members.disown(session_id)
        self._budget.release(session_id)  # its chat's record counts it now

    def give_back(self, session_id: UUID) -> bool:
        """A claimed member whose chat was refused goes back to idle (or is destroyed when no
        longer wanted); False when it is not this pool's."""
        if not self._members.owns(session_id):
            return False
        surplus = self._members.give_back(session_id)
        if surplus is not None:
            self._replenisher.destroy(surplus, "pool_member_surplus")
        return True

    def evict(self) -> bool:
        """Destroy one idle member to make room for a chat; False when none is idle."""
        member = self._members.evict()
        if member is None:
            return False
        self._replenisher.destroy(member, "pool_member_evicted")
        return True

    def idle_count(self) -> int:
        return self._members.counts().idle

    def owns(self, session_id: UUID) -> bool:
        return self._members.owns(session_id)

    def status(self) -> PoolStatus:
        self._forget_finished()
        counts = self._members.counts()
        return PoolStatus(
            total=counts.idle + counts.allocated,
            allocated=counts.allocated,
            available=counts.idle,
            revision=self._definition.revision,
        )

    def _forget_finished(self) -> None:
        """Allocated members whose chat's session ended stop counting (one read for all)."""
        settled = self._members.settled_allocations()
        if not settled:
            return
        running = {
            record.session_id
            for record in self._repository.get_many(settled)
            if record.status is SandboxStatus.RUNNING
        }
        self._members.forget(set(settled) - running)

    # --- health ---------------------------------------------------------------------------

    def check_health(self) -> int:
        """Ping every idle member; destroy those that do not answer, then refill.

        Returns how many were destroyed.
        """
        if self._health is None:
            return 0
        unhealthy = 0
        for member in self._members.idle():
            if self._health.ping(member.container_id, self._health_timeout_s):
                continue
            if not self._members.remove_idle(member):
                continue  # claimed meanwhile: the chat's own path handles a dead sandbox
            unhealthy += 1
            self._logger.warning(
                "pool_member_unhealthy",
                {"pool": self._definition.name, "container_id": member.container_id},
            )
            self._replenisher.destroy(member, "pool_member_removed")
        self.request_refill()
        return unhealthy

    # --- shutdown -------------------------------------------------------------------------

    def close(self, wait_s: float | None = None) -> None:
        """Cancel replenishment and destroy the idle members.

        A member still booting is destroyed by its worker when it comes up; ``wait_s`` joins
        the workers for that long (None: do not wait).
        """
        for member in self._members.close():
            self._replenisher.destroy(member, "pool_member_drained")
        self._replenisher.cancel()
        if wait_s is not None:
            self._replenisher.join(wait_s)


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
        environments: EnvironmentProvisioning | None = None,
        node: str = "",
        max_sandboxes: int | None = None,
    ) -> None:
        """``node``/``max_sandboxes``: this host's name and sandbox cap (Placement's); every
        pool's members count against the cap with the chats' sandboxes."""
        self._budget = HostBudget(repository, node, max_sandboxes)
        self._services = PoolServices(
            runtime,
            repository,
            clock,
            logger,
            health,
            health_timeout_s,
            rebinder,
            self._budget,
        )
        self._environments = environments
        self._unrunnable: set[str] = set()  # package pools already logged as not run
        self._lock = threading.Lock()
        self._pools: dict[str, WarmPool] = {}
        self._by_environment: dict[tuple[str, ...], list[WarmPool]] = {}
        self.on_demand = 0

    def pools(self) -> list[WarmPool]:
        with self._lock:
            return list(self._pools.values())

    def get(self, name: str) -> WarmPool | None:
        with self._lock:
            return self._pools.get(name)

    def apply(self, definitions: Iterable[PoolDefinition]) -> None:
        """Make the running pools match the definitions (add, redefine, close the rest).

        Package pools run only with ``environments`` (a runtime that serves package
        environments); without, they stay stored and are logged once per start.
        """
        wanted = {d.name: d for d in definitions if self._runnable(d)}
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
                    self._pools[name] = pool = self._new_pool(definition)
                    started.append(pool)
            by_environment: dict[tuple[str, ...], list[WarmPool]] = {}
            for name in sorted(self._pools):
                pool = self._pools[name]
                by_environment.setdefault(pool.definition.environment_key, []).append(pool)
            self._by_environment = by_environment
        for pool in closed:
            pool.close()
        for pool, definition in redefined:
            pool.redefine(definition)
        for pool in started:
            pool.request_refill()

    def _runnable(self, definition: PoolDefinition) -> bool:
        if not definition.packages or self._environments is not None:
            return True
        with self._lock:
            known = definition.name in self._unrunnable
            self._unrunnable.add(definition.name)
        if not known:
            self._services.logger.warning(
                "pool_environments_unsupported", {"pool": definition.name}
            )
        return False

    def _new_pool(self, definition: PoolDefinition) -> WarmPool:
        services = self._services
        maker: MemberMaker | None = None
        if definition.packages:
            assert self._environments is not None  # _runnable() let no other through
            maker = EnvironmentMembers(self._environments, definition.environment)
        return WarmPool(
            definition,
            services.runtime,
            services.repository,
            services.clock,
            services.logger,
            services.health,
            services.health_timeout_s,
            services.rebinder,
            maker,
            services.budget,
        )

    def claim(
        self,
        *,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
        packages: tuple[str, ...] = (),
    ) -> SandboxSession | None:
        """A member of a pool for exactly these (recorded) packages, or None (on demand)."""
        with self._lock:
            candidates = self._by_environment.get(packages, [])
        for pool in candidates:
            session = pool.claim(chat_id=chat_id, created_at=created_at, expires_at=expires_at)
            if session is not None:
                return session
        with self._lock:
            self.on_demand += 1
        return None

    def settle(self, session_id: UUID) -> None:
        for pool in self.pools():
            pool.settle(session_id)

    def give_back(self, session_id: UUID) -> None:
        for pool in self.pools():
            if pool.give_back(session_id):
                return

    def make_room(self) -> None:
        """Before a chat's sandbox is created on demand: evict idle members (the most idle
        pool's first) until the new sandbox fits the host's cap, or none is idle (then only
        starting members hold the room, and they are destroyed as soon as they are up)."""
        excess = self._budget.excess(extra=1)
        while excess > 0:
            pools = sorted(self.pools(), key=lambda p: p.idle_count(), reverse=True)
            if not pools or not pools[0].evict():
                return
            excess -= 1

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
