"""CleanupExpiredSandboxes with an executor: bounded parallel stops, each under its chat's lock;
and with a runtime that kills now and removes later (SandboxKiller)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from uuid import uuid4

from domain.sandbox import SandboxSession, SandboxStatus
from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.fakes import FakeRuntime
from testkit.world import World
from usecase.ports import SandboxKiller
from usecase.sandbox import CleanupExpiredSandboxes, DestroySandbox

WORKERS = 4


class ConcurrencyRuntime(FakeRuntime):
    """Stops that wait until WORKERS of them are in flight (or time out), counting the peak."""

    def __init__(self, fail: set[str] | None = None) -> None:
        super().__init__()
        self._gate = threading.Barrier(WORKERS, timeout=5)
        self._count_lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self._fail = fail or set()

    def stop(self, container_id: str) -> None:
        with self._count_lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            self._gate.wait()
        except threading.BrokenBarrierError:
            pass  # the tail of the backlog: fewer than WORKERS left
        finally:
            with self._count_lock:
                self.in_flight -= 1
        if container_id in self._fail:
            raise RuntimeError("engine said no")
        super().stop(container_id)


def seed(world: World, count: int) -> list[SandboxSession]:
    now = world.clock.now()
    sessions = []
    for index in range(count):
        session = SandboxSession(
            uuid4(),
            uuid4(),
            f"c{index}",
            SandboxStatus.RUNNING,
            now - timedelta(hours=1),
            now - timedelta(minutes=60 - index),
        )
        world.repository.save(session)
        sessions.append(session)
    return sessions


def sweep(world: World, runtime: FakeRuntime, executor: ThreadPoolExecutor):
    return CleanupExpiredSandboxes(
        world.repository, world.locker, runtime, world.clock, world.logger, executor
    ).execute()


def test_expired_sandboxes_are_stopped_in_parallel_up_to_the_pool_size(world: World) -> None:
    runtime = ConcurrencyRuntime()
    sessions = seed(world, 4 * WORKERS)
    with ThreadPoolExecutor(max_workers=WORKERS) as executor:
        cleaned = sweep(world, runtime, executor)

    assert cleaned == sessions  # in the order listed
    assert runtime.peak == WORKERS
    assert world.repository.list_expired(world.clock.now()) == []
    assert sorted(world.locker.chat_ids) == sorted(s.chat_id for s in sessions)
    assert world.logger.events().count("sandbox_cleaned") == len(sessions)


def test_a_failing_stop_keeps_its_record_and_the_parallel_sweep_goes_on(world: World) -> None:
    sessions = seed(world, 2 * WORKERS)
    runtime = ConcurrencyRuntime(fail={sessions[1].container_id})
    with ThreadPoolExecutor(max_workers=WORKERS) as executor:
        cleaned = sweep(world, runtime, executor)

    assert cleaned == [s for s in sessions if s is not sessions[1]]
    assert world.repository.list_expired(world.clock.now()) == [sessions[1]]
    assert world.logger.events().count("sandbox_clean_failed") == 1


def test_a_session_renewed_before_its_turn_is_skipped(world: World) -> None:
    sessions = seed(world, WORKERS)
    renewed = SandboxSession(
        sessions[2].session_id,
        sessions[2].chat_id,
        sessions[2].container_id,
        SandboxStatus.RUNNING,
        sessions[2].created_at,
        world.clock.now() + timedelta(minutes=5),
    )

    class RenewingRepository(InMemorySandboxSessionRepository):
        """Renews one session between the listing and the sweep's re-read."""

        def list_expired(self, now: datetime) -> list[SandboxSession]:
            listed = super().list_expired(now)
            self.save(renewed)
            return listed

    repository = RenewingRepository()
    for session in sessions:
        repository.save(session)
    world.repository = repository
    with ThreadPoolExecutor(max_workers=WORKERS) as executor:
        cleaned = sweep(world, FakeRuntime(), executor)

    assert renewed.session_id not in {s.session_id for s in cleaned}
    assert len(cleaned) == WORKERS - 1
    assert repository.get_active_by_chat_id(renewed.chat_id) == renewed


class KillingRuntime(FakeRuntime):
    """Records kills; a stop would be the slow engine path the sweep must not take."""

    def __init__(self, fail: set[str] | None = None) -> None:
        super().__init__()
        self.killed: list[str] = []
        self._fail = fail or set()

    def kill(self, container_id: str) -> None:
        if container_id in self._fail:
            raise RuntimeError("cannot kill")
        self.killed.append(container_id)


def test_the_sweep_kills_rather_than_stops_and_deletes_the_records(world: World) -> None:
    runtime = KillingRuntime()
    assert isinstance(runtime, SandboxKiller)
    assert not isinstance(FakeRuntime(), SandboxKiller)
    sessions = seed(world, 3)

    cleaned = CleanupExpiredSandboxes(
        world.repository, world.locker, runtime, world.clock, world.logger
    ).execute()

    assert cleaned == sessions
    assert runtime.killed == [s.container_id for s in sessions]
    assert runtime.stopped == []
    assert world.repository.list_expired(world.clock.now()) == []


def test_a_failing_kill_keeps_the_record_for_the_next_sweep(world: World) -> None:
    sessions = seed(world, 3)
    runtime = KillingRuntime(fail={sessions[1].container_id})

    cleaned = CleanupExpiredSandboxes(
        world.repository, world.locker, runtime, world.clock, world.logger
    ).execute()

    assert cleaned == [sessions[0], sessions[2]]
    assert world.repository.list_expired(world.clock.now()) == [sessions[1]]
    assert world.logger.events().count("sandbox_clean_failed") == 1


def test_an_explicit_destroy_still_stops_synchronously(world: World) -> None:
    (session,) = seed(world, 1)
    runtime = KillingRuntime()

    DestroySandbox(world.repository, world.locker, runtime, world.logger).execute(session.chat_id)

    assert runtime.stopped == [session.container_id]
    assert runtime.killed == []
