"""The warm execute path on PostgreSQL: its statements, the renewal slack across replicas, and
reconnects without pre-ping on every checkout."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from uuid import uuid4

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from domain.execution import ExecutionRequest
from repository import database
from repository.database import create_database_engine
from repository.postgres_lock import PostgresAdvisorySandboxLifecycleLocker
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository, sandbox_sessions
from testkit.fakes import FakeClock, FakeLogger, FakeRuntime
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.sandbox import CleanupExpiredSandboxes

pytestmark = pytest.mark.postgres

TTL = timedelta(minutes=5)
SLACK = timedelta(minutes=1)


class Replica:
    """One service replica: engines of its own on the shared database, shared clock and runtime."""

    def __init__(self, url: str, clock: FakeClock, runtime: FakeRuntime) -> None:
        self.engine = create_database_engine(url)
        self.lock_engine = create_database_engine(url)
        self.locker = PostgresAdvisorySandboxLifecycleLocker(self.lock_engine, timeout_s=10)
        # Wired as the service wires it (entrypoint/persistence.py).
        self.repository = SqlAlchemySandboxSessionRepository(
            self.engine, fence=self.locker.verify_held, locked_read=self.locker.take_locked_read
        )
        self.logger = FakeLogger()
        self.execute_code = ExecuteCode(
            self.repository, self.locker, runtime, clock, self.logger, TTL, renew_slack=SLACK
        )
        self.sweep = CleanupExpiredSandboxes(
            self.repository, self.locker, runtime, clock, self.logger
        )

    def run(self, chat_id) -> None:
        self.execute_code.execute(ExecuteCodeCommand(chat_id, ExecutionRequest(code="print(1)")))

    def dispose(self) -> None:
        self.engine.dispose()
        self.lock_engine.dispose()


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
    queries: list[str] = []
    send = psycopg.Cursor.execute

    def record(cursor, query, *args, **kwargs):
        queries.append(str(query))
        return send(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", record)
    clock.advance(timedelta(seconds=10))
    replica.run(chat)

    # The lock with the read (lock_timeout, pg_advisory_lock, the record), the unlock: no write.
    assert len(queries) == 2, queries
    assert "pg_advisory_lock" in queries[0] and "FROM sandbox_sessions" in queries[0]
    assert "pg_advisory_unlock" in queries[1]


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
