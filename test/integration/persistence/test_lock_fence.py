"""A PostgreSQL chat lock lives as long as its connection. When that connection is killed
(pg_terminate_backend), another replica can take the chat; the first holder's next write must
then be refused, not applied over the new holder's work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from domain.errors import LockLostError
from domain.sandbox import SandboxSession, SandboxStatus
from repository.database import create_database_engine
from repository.postgres_lock import (
    PostgresAdvisorySandboxLifecycleLocker,
    chat_lock_key,
    lock_pool_options,
)
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository, sandbox_sessions

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _session(chat_id) -> SandboxSession:
    return SandboxSession(
        session_id=uuid4(),
        chat_id=chat_id,
        container_id="c-1",
        status=SandboxStatus.RUNNING,
        created_at=T0,
        expires_at=T0 + timedelta(minutes=15),
    )


def _holder_pid(engine: Engine, key: int) -> int:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    with engine.begin() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid = CAST(:h AS oid) AND objid = CAST(:l AS oid)"
                ),
                {"h": unsigned >> 32, "l": unsigned & 0xFFFF_FFFF},
            ).scalar_one()
        )


@pytest.fixture
def engines(postgres_url: str, postgres_engine: Engine):
    with postgres_engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
    made = [create_database_engine(postgres_url, lock_pool_options()) for _ in range(2)]
    yield made
    for engine in made:
        engine.dispose()


def test_a_holder_whose_lock_connection_was_killed_cannot_write(
    engines: list[Engine], postgres_engine: Engine
) -> None:
    lock_engine, other_lock_engine = engines
    locker = PostgresAdvisorySandboxLifecycleLocker(
        lock_engine, timeout_s=5, unlock_without_waiting=True
    )
    repository = SqlAlchemySandboxSessionRepository(postgres_engine, fence=locker.verify_held)
    other_replica = PostgresAdvisorySandboxLifecycleLocker(
        other_lock_engine, timeout_s=5, unlock_without_waiting=True
    )
    chat_id = uuid4()
    first = _session(chat_id)
    with locker.lock(chat_id):
        repository.save(first)  # still held: the write goes through
        with postgres_engine.begin() as connection:
            connection.execute(
                sa.text("SELECT pg_terminate_backend(:pid)"),
                {"pid": _holder_pid(postgres_engine, chat_lock_key(chat_id))},
            )
        # The server dropped the lock with the connection: another replica takes the chat.
        with other_replica.lock(chat_id):
            pass
        with pytest.raises(LockLostError):
            repository.save(_session(chat_id))
        with pytest.raises(LockLostError):
            repository.delete(first.session_id)
    assert repository.get_active_by_chat_id(chat_id) == first


def test_a_lock_that_is_held_lets_writes_through_and_no_lock_means_no_check(
    engines: list[Engine], postgres_engine: Engine
) -> None:
    locker = PostgresAdvisorySandboxLifecycleLocker(
        engines[0], timeout_s=5, unlock_without_waiting=True
    )
    repository = SqlAlchemySandboxSessionRepository(postgres_engine, fence=locker.verify_held)
    chat_id = uuid4()
    stored = _session(chat_id)
    with locker.lock(chat_id):
        repository.save(stored)
        locker.verify_held()
    repository.delete(stored.session_id)
    assert repository.get(stored.session_id) is None
