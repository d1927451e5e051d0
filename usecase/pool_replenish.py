"""Starting warm pool members: what a member is started from, and the background replenishment.

A member of the base environment is an ordinary ``SandboxRuntime.create``; a member of a
package environment is started from that environment's cached build (``EnvironmentStore.ensure``
finds it, or builds it once when absent; ``EnvironmentRuntime.create_from`` starts it) and
records its packages, exactly as a chat's sandbox created on demand for them would.

A member is ready when its python interpreter has run a few cells that print (the warm-up): the
cost of a first run in a fresh interpreter (and, on a restored microVM, of QEMU translating the
guest code of an execution and of its output path for the first time) is paid here instead of by
the chat that claims it, and a member that cannot run code is never handed out.

Replenishment runs on background threads under a per-pool semaphore (1 for small pools, a capped
number for large ones), released on failure and on cancellation (the pool's ``close``). A worker
reserves a member only while the pool is short (``PoolMembers.reserve``), so it does nothing when
the pool filled meanwhile; a member that finished booting after the pool was closed or shrunk is
destroyed, not kept.

Every member also needs room in the host's budget (usecase/pool_budget.py): without it nothing
is started (``replenish_capped``; ``pool_replenish_capped`` is logged once, with the numbers,
until a start gets room again: ``pool_replenish_resumed``), and a member whose room a chat took
while it booted is destroyed. Replenishment is requested on every claim and every health round,
so a capped pool resumes by itself once chats end.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from domain.environment import Environment, recorded_packages
from domain.execution import ExecutionRequest, Language
from domain.sandbox import SandboxSession
from usecase.environment import EnvironmentProvisioning
from usecase.pool_budget import HostBudget, Room
from usecase.pool_members import PoolMembers
from usecase.ports import Clock, Logger, SandboxRuntime

# Idle members have no record and no deadline of their own; this keeps them out of any
# expiry logic that might read the runtime's view.
MEMBER_LIFETIME = timedelta(days=3650)
# Under TCG a restored VM's first executions run guest code QEMU has not translated yet: one
# ``pass`` left a chat's first ``print(1)`` ~30 ms of QEMU CPU, three cells that print ~16 ms
# (steady state ~11 ms). The output path is the part ``pass`` never runs.
WARM_UP = (ExecutionRequest(code="print(0)", language=Language.PYTHON, timeout_s=60.0),) * 3
_LARGE_POOL = 8
_MAX_PARALLEL = 4
# After a failed start, refills wait this long, doubled per failure in a row up to the cap: a
# package environment whose build fails is not rebuilt every health round (minutes of CPU each).
RETRY_AFTER_FAILURE = timedelta(seconds=2)
MAX_RETRY_AFTER_FAILURE = timedelta(minutes=5)


def retry_delay(failures: int) -> timedelta:
    """How long refills wait after ``failures`` (>= 1) failed starts in a row."""
    delay: timedelta = RETRY_AFTER_FAILURE * 2 ** min(failures - 1, 20)
    return min(MAX_RETRY_AFTER_FAILURE, delay)


def replenish_parallelism(buffer_max: int) -> int:
    """One replenish at a time for small pools, a capped number in parallel for large ones."""
    if buffer_max < _LARGE_POOL:
        return 1
    return min(_MAX_PARALLEL, buffer_max // _LARGE_POOL + 1)


class MemberMaker(Protocol):
    """Starts one agent-ready member; its session id is also its placeholder chat id (runtime
    labels cannot change after create)."""

    def make(self, member_id: UUID, now: datetime) -> SandboxSession: ...


class BaseMembers:
    """Members of the base environment."""

    def __init__(self, runtime: SandboxRuntime) -> None:
        self._runtime = runtime

    def make(self, member_id: UUID, now: datetime) -> SandboxSession:
        return self._runtime.create(
            session_id=member_id,
            chat_id=member_id,
            created_at=now,
            expires_at=now + MEMBER_LIFETIME,
        )


class EnvironmentMembers:
    """Members of a package environment, started from its cached build."""

    def __init__(self, environments: EnvironmentProvisioning, environment: Environment) -> None:
        self._environments = environments
        self._environment = environment

    def make(self, member_id: UUID, now: datetime) -> SandboxSession:
        # ensure() is a cache look-up once built (and rebuilds an environment evicted since).
        built = self._environments.store.ensure(self._environment)
        session = self._environments.runtime.create_from(
            built,
            session_id=member_id,
            chat_id=member_id,
            created_at=now,
            expires_at=now + MEMBER_LIFETIME,
        )
        return replace(session, packages=recorded_packages(self._environment))


class Replenisher:
    """Starts members into ``members`` in the background; ``destroy`` stops one."""

    def __init__(
        self,
        name: str,
        members: PoolMembers,
        maker: MemberMaker,
        runtime: SandboxRuntime,
        clock: Clock,
        logger: Logger,
        parallelism: int,
        budget: HostBudget,
    ) -> None:
        self._name = name
        self._budget = budget
        self._capped = False  # logged once per capped spell
        self._members = members
        self._maker = maker
        self._runtime = runtime
        self._clock = clock
        self._logger = logger
        self._parallelism = parallelism
        self._semaphore = threading.BoundedSemaphore(parallelism)
        self._lock = threading.Lock()
        self._workers: set[threading.Thread] = set()
        self._cancelled = threading.Event()
        self._due_changed = threading.Condition()
        self._due: float | None = None  # when the dispatcher runs the next delayed refill
        self._dispatcher: threading.Thread | None = None
        self._failures = 0  # failed starts in a row
        self._retry_at: datetime | None = None

    def backing_off(self) -> bool:
        """True while refills wait after failed starts (see RETRY_AFTER_FAILURE)."""
        with self._lock:
            return self._retry_at is not None and self._clock.now() < self._retry_at

    def request(self, delay_s: float = 0.0) -> None:
        """Start background workers when the pool is below its buffer (or its minimum); after
        ``delay_s`` they are started by the pool's dispatcher thread, so that a claim (which
        asks with a delay) never waits for a thread to start: under load that took
        milliseconds of a new chat's first result. Nothing while backing off."""
        if delay_s > 0:
            self._schedule(delay_s)
            return
        if self.backing_off():
            return
        wanted = min(self._members.refill_wanted(), self._parallelism)
        if wanted == 0:
            return
        started = []
        with self._lock:
            # Not fewer for the workers still running: one may be past its last reserve().
            for _ in range(wanted):
                thread = threading.Thread(target=self._run, name=f"pool-{self._name}", daemon=True)
                self._workers.add(thread)
                started.append(thread)
        for thread in started:
            thread.start()

    def cancel(self) -> None:
        """Stop the dispatcher (the pool is closing: nothing more is started)."""
        self._cancelled.set()
        with self._due_changed:
            self._due_changed.notify_all()

    def fill(self) -> None:
        """Replenish on the caller's thread until the pool is full (start-up, tests)."""
        while self._start_one():
            pass

    def join(self, wait_s: float) -> None:
        with self._lock:
            workers = list(self._workers)
        if self._dispatcher is not None:
            workers.append(self._dispatcher)
        for worker in workers:
            worker.join(wait_s)

    def destroy(self, member: SandboxSession, event: str) -> None:
        try:
            self._runtime.stop(member.container_id)
        except Exception as exc:
            # Reconciliation removes it later: it is no longer owned by the pool.
            self._logger.error(
                "pool_member_stop_failed",
                {"container_id": member.container_id, "error": type(exc).__name__},
            )
        self._members.disown(member.session_id)
        self._budget.release(member.session_id)
        self._logger.info(event, {"pool": self._name, "container_id": member.container_id})

    def _run(self) -> None:
        try:
            self.fill()
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _schedule(self, delay_s: float) -> None:
        """A refill in ``delay_s`` (the earliest one asked for wins); the dispatcher thread is
        started by the first request."""
        due = time.monotonic() + delay_s
        with self._due_changed:
            if self._due is None or due < self._due:
                self._due = due
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name=f"pool-{self._name}-refill", daemon=True
                )
                self._dispatcher.start()
            self._due_changed.notify()

    def _dispatch(self) -> None:
        while not self._cancelled.is_set():
            with self._due_changed:
                if self._due is None:
                    self._due_changed.wait()
                    continue
                wait_s = self._due - time.monotonic()
                if wait_s > 0:
                    self._due_changed.wait(wait_s)
                    continue
                self._due = None
            if not self._cancelled.is_set():
                self.request()

    def _start_one(self) -> bool:
        """Start one member; False when there is nothing (more) to do or it failed."""
        with self._semaphore:
            member_id = self._members.reserve()
            if member_id is None:
                return False
            if not self._has_room(member_id):
                return False
            member = None
            try:
                member = self._maker.make(member_id, self._clock.now())
                for request in WARM_UP:
                    self._runtime.execute(member.container_id, request)
            except Exception as exc:
                self._members.abandon(member_id)
                self._budget.release(member_id)
                delay = self._failed()
                self._logger.error(
                    "pool_replenish_failed",
                    {
                        "pool": self._name,
                        "error": type(exc).__name__,
                        "retry_in_s": delay.total_seconds(),
                    },
                )
                if member is not None:
                    self.destroy(member, "pool_member_discarded")
                return False
            if not self._budget.fits():
                # A chat took this member's room while it booted: chats come first.
                self._members.unreserve(member_id)
                self.destroy(member, "pool_member_discarded")
                return False
            if not self._members.admit(member):
                # Booted after the pool was closed or shrunk: nobody will ever claim it.
                self.destroy(member, "pool_member_discarded")
                return False
        with self._lock:
            self._failures, self._retry_at = 0, None
        self._logger.info(
            "pool_member_ready", {"pool": self._name, "container_id": member.container_id}
        )
        return True

    def _failed(self) -> timedelta:
        with self._lock:
            self._failures += 1
            delay = retry_delay(self._failures)
            self._retry_at = self._clock.now() + delay
            return delay

    def _has_room(self, member_id: UUID) -> bool:
        """Hold the host budget's room for a reserved member, or hand the reservation back."""
        room = self._budget.hold(member_id)
        if not room.granted:
            self._members.unreserve(member_id)
        self._note(room)
        return room.granted

    def _note(self, room: Room) -> None:
        """Log the start and the end of a capped spell, not every refused start."""
        with self._lock:
            changed = self._capped == room.granted
            self._capped = not room.granted
        if not changed:
            return
        attrs: dict[str, str | int | float | bool] = {
            "pool": self._name,
            "running": room.running,
            "held": room.held,
        }
        if room.granted:
            self._logger.info("pool_replenish_resumed", attrs)
        else:
            self._logger.warning("pool_replenish_capped", {**attrs, "limit": room.limit or -1})
