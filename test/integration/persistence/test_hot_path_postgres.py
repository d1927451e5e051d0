"""The warm execute path on PostgreSQL: its statements, the renewal slack across replicas, and
reconnects without pre-ping on every checkout."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from domain.errors import SandboxLimitError
from domain.execution import ExecutionRequest
from domain.tenant import Caller
from repository import database
from repository.database import create_database_engine
from repository.postgres_lock import (
    PostgresAdvisorySandboxLifecycleLocker,
    PostgresAdvisorySweepLeaderLock,
    lock_pool_options,
)
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository, sandbox_sessions
from testkit.fakes import FakeClock, FakeRuntime
from testkit.pg import record_driver_queries, wait_until_backends_exit
from testkit.pg_replica import SLACK, TTL, PreStarted, Replica
from usecase.execute import ExecuteCodeCommand
from usecase.sandbox import Placement

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(postgres_url: str, postgres_engine: Engine):
    with postgres_engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
    clock, runtime = FakeClock(), FakeRuntime()
    made = [Replica(postgres_url, clock, runtime) for _ in range(3)]
    yield clock, made
    for replica in made:
        replica.dispose()


def test_a_warm_execute_within_the_slack_is_two_round_trips(
    replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, (replica, _, _) = replicas
    chat = uuid4()
    replica.run(chat)
    clock.advance(timedelta(seconds=10))
    replica.run(chat)  # written with the slack
    # Every query the driver sends, SQLAlchemy's and the locker's own alike: one per round trip.
    queries = record_driver_queries(monkeypatch)
    clock.advance(timedelta(seconds=10))
    replica.run(chat)

    # The lock with the read (lock_timeout, pg_advisory_lock, the record), the unlock: no write.
    assert len(queries) == 2, queries
    assert "pg_advisory_lock" in queries[0] and "FROM sandbox_sessions" in queries[0]
    assert "pg_advisory_unlock" in queries[1]


def test_a_new_chat_on_a_claimed_sandbox_is_three_round_trips(
    postgres_url: str, replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lock with read, the record inserted within both caps (on the lock's connection: no
    fence, no count of its own), unlock: the caps cost no round trip."""
    clock, _ = replicas
    runtime = FakeRuntime()
    here = Placement(node="n", max_sandboxes=5, max_per_owner=5)
    replica = Replica(postgres_url, clock, runtime, PreStarted(runtime), here)
    try:
        replica.run(uuid4())  # connections opened
        queries = record_driver_queries(monkeypatch)
        replica.run(uuid4())
    finally:
        replica.dispose()
    assert len(queries) == 3, queries
    assert "pg_advisory_lock" in queries[0]
    assert "pg_advisory_xact_lock" in queries[1] and "EXECUTE sandboxd_new_record_" in queries[1]
    assert "pg_advisory_unlock" in queries[2]


@pytest.mark.parametrize(
    ("placement", "owners", "admitted"),
    [
        (Placement(node="n", max_sandboxes=3), ["a", "b", "c", "d", "e", "f"], 3),
        (Placement(node="n", max_sandboxes=9, max_per_owner=2), ["a"] * 6, 2),
    ],
    ids=["node", "owner"],
)
def test_new_chats_racing_on_every_replica_never_pass_a_cap(
    postgres_url: str, replicas, placement: Placement, owners: list[str], admitted: int
) -> None:
    """Six new chats at once, two per replica, on sandboxes claimed ahead: every one reaches
    the insert together (nothing refuses earlier), and exactly the cap's worth is saved."""
    clock, _ = replicas
    runtime = FakeRuntime()
    sources = [PreStarted(runtime) for _ in range(3)]
    made = [Replica(postgres_url, clock, runtime, source, placement) for source in sources]
    start = threading.Barrier(len(owners))
    outcomes: list[str] = []

    def new_chat(replica: Replica, owner: str) -> None:
        start.wait()
        command = ExecuteCodeCommand(
            uuid4(), ExecutionRequest(code="print(1)"), caller=Caller(owner)
        )
        try:
            replica.execute_code.execute(command)
            outcomes.append("saved")
        except SandboxLimitError:
            outcomes.append("refused")

    try:
        for _ in range(3):  # rounds: the race is not won every time without the cap's lock
            outcomes.clear()
            for source in sources:
                source.given_back.clear()
            threads = [
                threading.Thread(target=new_chat, args=(made[index % 3], owner))
                for index, owner in enumerate(owners)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            expected = ["refused"] * (len(owners) - admitted) + ["saved"] * admitted
            assert sorted(outcomes) == expected
            assert made[0].repository.count_running("n") == admitted
            assert sum(len(source.given_back) for source in sources) == len(owners) - admitted
            with made[0].engine.begin() as connection:
                connection.execute(sa.delete(sandbox_sessions))
    finally:
        for replica in made:
            replica.dispose()


def test_the_read_with_the_lock_sees_what_the_previous_holder_wrote(replicas) -> None:
    """The record comes in the lock's round trip, yet after the wait: not from a snapshot taken
    before another replica, holding the lock meanwhile, replaced the sandbox."""
    _, (first, second, _) = replicas
    chat = uuid4()
    first.run(chat)
    waiting = threading.Event()
    with second.locker.lock(chat):
        assert second.repository.get_active_by_chat_id(chat) is not None

        def run_first() -> None:
            waiting.set()
            first.run(chat)

        thread = threading.Thread(target=run_first)
        thread.start()
        waiting.wait()
        time.sleep(0.3)  # the first replica now waits for the lock with its query sent
        stale = second.repository.get_active_by_chat_id(chat)
        second.repository.delete(stale.session_id)
    thread.join()

    # The first replica found no record (the delete), so it made a new sandbox and said so.
    current = first.repository.get_active_by_chat_id(chat)
    assert current is not None and current.session_id != stale.session_id
    assert first.logger.named("sandbox_created")[-1]["session_id"] == str(current.session_id)


@pytest.mark.parametrize("gap_s", [1, 59, 61, 200])
def test_no_replica_sweeps_a_sandbox_used_within_its_ttl(replicas, gap_s: int) -> None:
    clock, (first, second, sweeper) = replicas
    chat = uuid4()
    for index in range(6):
        (first if index % 2 == 0 else second).run(chat)
        clock.advance(timedelta(seconds=gap_s))
    clock.advance(TTL - timedelta(seconds=gap_s) - timedelta(milliseconds=1))

    assert sweeper.sweep.execute() == []

    clock.advance(SLACK + timedelta(milliseconds=2))
    assert len(sweeper.sweep.execute()) == 1


def test_a_connection_killed_while_idle_is_replaced_before_use(
    postgres_url: str, postgres_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 0.0)
    engine = create_database_engine(postgres_url)
    repository = SqlAlchemySandboxSessionRepository(engine)
    try:
        assert repository.get_active_by_chat_id(uuid4()) is None  # one pooled connection
        with engine.connect() as probe:
            pid = probe.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
        with postgres_engine.connect() as admin:
            admin.execute(sa.select(sa.func.pg_terminate_backend(pid)))

        # Idle past the threshold: pinged, found dead, replaced; the call itself succeeds.
        assert repository.get_active_by_chat_id(uuid4()) is None
    finally:
        engine.dispose()


@pytest.mark.parametrize(("unlock_without_waiting", "lock_queries"), [(False, 3), (True, 2)])
def test_a_lock_connection_killed_while_idle_costs_a_retry_not_a_ping(
    postgres_url: str,
    postgres_engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    unlock_without_waiting: bool,
    lock_queries: int,
) -> None:
    """The locker's engine pings nothing before use. Waiting for unlocks: a dead pooled
    connection fails the lock query itself, the pool is replaced, and the lock is taken on a new
    connection. Not waiting (the service's wiring): reading the pending unlock's answer at
    checkout finds it dead, and the pool reconnects before any lock query is sent."""
    engine = create_database_engine(postgres_url, lock_pool_options())
    locker = PostgresAdvisorySandboxLifecycleLocker(
        engine, timeout_s=10, unlock_without_waiting=unlock_without_waiting
    )
    monkeypatch.setattr(database, "PING_AFTER_IDLE_S", 0.0)
    try:
        pids = []
        for _ in range(2):  # two pooled connections, both to be killed
            with engine.connect() as probe:
                pids.append(probe.connection.dbapi_connection.info.backend_pid)  # type: ignore[union-attr]
        with locker.lock(uuid4()), locker.lock(uuid4()):
            pass
        with postgres_engine.connect() as admin:
            for pid in pids:
                admin.execute(sa.select(sa.func.pg_terminate_backend(pid)))
        wait_until_backends_exit(pids)
        queries = record_driver_queries(monkeypatch)
        chat = uuid4()
        with locker.lock(chat):
            assert locker.take_locked_read(chat) == (True, None)
        with locker.lock(chat):  # the pool was replaced: no second failure
            pass
        assert not any("SELECT 1" in query for query in queries), queries
        # Waiting for unlocks: the failed lock query counts too.
        assert sum("pg_advisory_lock" in query for query in queries) == lock_queries
    finally:
        engine.dispose()


def test_an_unlock_left_unread_is_read_before_anyone_else_uses_its_connection(
    postgres_url: str, postgres_engine: Engine
) -> None:
    """One pooled connection: the chat's unlock is sent, not waited for; the sweep leader that
    checks the connection out next must find it idle, and another replica must get the chat."""
    engine = create_database_engine(postgres_url, lock_pool_options(max_connections=1))
    other_engine = create_database_engine(postgres_url, lock_pool_options())
    locker = PostgresAdvisorySandboxLifecycleLocker(
        engine, timeout_s=5, unlock_without_waiting=True
    )
    other_replica = PostgresAdvisorySandboxLifecycleLocker(
        other_engine, timeout_s=5, unlock_without_waiting=True
    )
    leader = PostgresAdvisorySweepLeaderLock(engine)
    chat = uuid4()
    try:
        for _ in range(3):
            with locker.lock(chat):
                pass
            with leader.try_lead() as leading:
                assert leading
            with other_replica.lock(chat):
                pass
    finally:
        engine.dispose()
        other_engine.dispose()
