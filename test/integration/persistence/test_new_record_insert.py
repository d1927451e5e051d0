"""A new chat's record on PostgreSQL: committed without waiting for its WAL flush (and nothing
else is), inserted by a statement prepared once per connection and planned once.

A trigger on the real table notes, for every row written, the synchronous_commit its own
transaction ran with: what the server itself applied, whichever connection or path wrote it.
pg_prepared_statements, read on the lock connection, says what that session prepared and how
often it planned it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from repository.sqlalchemy_session import sandbox_sessions
from testkit.fakes import FakeClock, FakeRuntime
from testkit.pg import record_driver_queries
from testkit.pg_replica import SLACK, PreStarted, Replica
from usecase.sandbox import Placement

pytestmark = pytest.mark.postgres

_NOTE = """
CREATE FUNCTION sandboxd_test_note_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sandboxd_test_commit_modes VALUES (TG_OP, current_setting('synchronous_commit'));
    RETURN NULL;
END $$
"""


@pytest.fixture
def commit_modes(postgres_engine: Engine) -> Iterator[None]:
    """From now until the test ends, each sandbox record written is noted (see notes())."""
    with postgres_engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
        connection.exec_driver_sql("CREATE TABLE sandboxd_test_commit_modes (op text, mode text)")
        connection.exec_driver_sql(_NOTE)
        connection.exec_driver_sql(
            "CREATE TRIGGER sandboxd_test_note_commit_mode AFTER INSERT OR UPDATE"
            " ON sandbox_sessions FOR EACH ROW EXECUTE FUNCTION sandboxd_test_note_commit_mode()"
        )
    try:
        yield
    finally:
        with postgres_engine.begin() as connection:
            connection.exec_driver_sql(
                "DROP TRIGGER sandboxd_test_note_commit_mode ON sandbox_sessions"
            )
            connection.exec_driver_sql("DROP FUNCTION sandboxd_test_note_commit_mode()")
            connection.exec_driver_sql("DROP TABLE sandboxd_test_commit_modes")


def recorded(engine: Engine, chat: UUID) -> bool:
    """Whether another connection (another replica) sees the chat's record."""
    with engine.connect() as connection:
        query = sa.select(sandbox_sessions.c.chat_id).where(sandbox_sessions.c.chat_id == chat)
        return connection.execute(query).scalar_one_or_none() == chat


def notes(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT op, mode FROM sandboxd_test_commit_modes")
        return [(op, mode) for op, mode in rows]


@pytest.mark.parametrize("pooled", [False, True], ids=["on_demand", "claimed_from_a_pool"])
@pytest.mark.parametrize("capped", [False, True], ids=["no_caps", "caps"])
def test_a_new_chats_record_is_committed_without_waiting_for_its_flush(
    postgres_url: str, postgres_engine: Engine, commit_modes, pooled: bool, capped: bool
) -> None:
    runtime = FakeRuntime()
    placement = Placement(node="n", max_sandboxes=5, max_per_owner=5) if capped else None
    warm = PreStarted(runtime) if pooled else None
    replica = Replica(postgres_url, FakeClock(), runtime, warm, placement)
    try:
        chat = uuid4()
        replica.run(chat)
        assert notes(postgres_engine) == [("INSERT", "off")]
        # Visible to another connection (another replica) as soon as the call returned.
        assert recorded(postgres_engine, chat)
    finally:
        replica.dispose()


def test_the_setting_stays_with_that_transaction(
    postgres_url: str, postgres_engine: Engine, commit_modes
) -> None:
    """SET LOCAL, not SET: the lock connection that wrote the record goes back to its pool with
    the server's own setting, and the chat's later writes (its renewal) wait for their flush."""
    clock, runtime = FakeClock(), FakeRuntime()
    replica = Replica(postgres_url, clock, runtime)
    try:
        chat = uuid4()
        replica.run(chat)
        with replica.lock_engine.connect() as pooled:
            setting = pooled.exec_driver_sql("SHOW synchronous_commit").scalar_one()
        assert setting == "on"
        clock.advance(SLACK + timedelta(seconds=1))
        replica.run(chat)  # past the slack: the deadline is written
        assert notes(postgres_engine) == [("INSERT", "off"), ("UPDATE", "on")]
    finally:
        replica.dispose()


def _prepared_here(replica: Replica) -> tuple[int, int, int]:
    """(statements, generic plans, custom plans) of the new-record inserts prepared on the
    replica's lock connection (one chat at a time uses one pooled connection)."""
    with replica.lock_engine.connect() as pooled:
        row = pooled.exec_driver_sql(
            "SELECT count(*), coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0)"
            " FROM pg_prepared_statements WHERE name LIKE 'sandboxd_new_record_%%'"
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def test_the_insert_is_prepared_once_and_planned_once(
    postgres_url: str, postgres_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with postgres_engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
    runtime = FakeRuntime()
    placement = Placement(node="n", max_sandboxes=50, max_per_owner=50)
    replica = Replica(postgres_url, FakeClock(), runtime, PreStarted(runtime), placement)
    try:
        queries = record_driver_queries(monkeypatch)
        for _ in range(3):
            replica.run(uuid4())
        prepares = [q for q in queries if q.startswith("PREPARE sandboxd_new_record_")]
        assert len(prepares) == 1, queries
        # Executed three times, on the generic plan every time: the statement is not planned
        # per new chat.
        assert _prepared_here(replica) == (1, 3, 0)
        with postgres_engine.connect() as other:
            count = other.execute(sa.select(sa.func.count()).select_from(sandbox_sessions))
            assert count.scalar_one() == 3
    finally:
        replica.dispose()


def test_a_session_that_lost_the_statement_gets_it_again(
    postgres_url: str, postgres_engine: Engine
) -> None:
    with postgres_engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
    runtime = FakeRuntime()
    replica = Replica(postgres_url, FakeClock(), runtime, PreStarted(runtime))
    try:
        replica.run(uuid4())
        with replica.lock_engine.connect() as pooled:
            pooled.exec_driver_sql("DEALLOCATE ALL")
        assert _prepared_here(replica)[0] == 0
        chat = uuid4()
        replica.run(chat)  # prepared again and retried: the record is there
        assert recorded(postgres_engine, chat)
        assert _prepared_here(replica)[0] == 1
    finally:
        replica.dispose()
