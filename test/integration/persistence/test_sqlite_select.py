"""The embedded SQLite store's chat read, which runs precompiled on the driver connection
(repository/sqlite_select.py): the same records as SQLAlchemy gives, what other connections
committed, and clean errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from domain.errors import RepositoryUnavailableError
from domain.sandbox import SandboxSession, SandboxStatus
from repository.database import create_database_engine, migrate
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository, sandbox_sessions
from repository.sqlite_select import SqliteSelect

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path / 'sandboxd.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


def record(**changes: object) -> SandboxSession:
    values: dict[str, object] = {
        "session_id": uuid4(),
        "chat_id": uuid4(),
        "container_id": "c" * 64,
        "status": SandboxStatus.RUNNING,
        "created_at": T0,
        "expires_at": T0 + timedelta(minutes=15),
        "runtime_kind": "docker",
    }
    values.update(changes)
    return SandboxSession(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "stored",
    [
        record(),
        record(
            status=SandboxStatus.DEAD,
            created_at=datetime(2026, 3, 1, 17, 0, 0, 123456, tzinfo=timezone(timedelta(hours=5))),
            last_activity_at=T0 + timedelta(seconds=1, microseconds=7),
            max_expires_at=T0 + timedelta(hours=4),
            packages=("pandas==2.2.3", "numpy"),
            owner="tenant-a",
            node="node-1",
        ),
    ],
    ids=["fields-left-empty", "every-field-set"],
)
def test_the_chat_read_gives_back_the_record_as_saved(
    engine: Engine, stored: SandboxSession
) -> None:
    repository = SqlAlchemySandboxSessionRepository(engine)
    repository.save(stored)
    loaded = repository.get_active_by_chat_id(stored.chat_id)
    assert loaded == stored
    assert loaded is not None and loaded.created_at.tzinfo is UTC
    # And what SQLAlchemy's own path reads for the same row.
    assert repository.get(stored.session_id) == loaded


def test_the_chat_read_finds_only_that_chat(engine: Engine) -> None:
    repository = SqlAlchemySandboxSessionRepository(engine)
    mine, other = record(), record()
    repository.save(mine)
    repository.save(other)
    assert repository.get_active_by_chat_id(mine.chat_id) == mine
    assert repository.get_active_by_chat_id(uuid4()) is None


def test_the_chat_read_sees_what_another_connection_committed_since(
    engine: Engine, tmp_path: Path
) -> None:
    repository = SqlAlchemySandboxSessionRepository(engine)
    stored = record()
    repository.save(stored)
    assert repository.get_active_by_chat_id(stored.chat_id) == stored
    # Another process's view of the same file (its own engine and connections).
    elsewhere = SqlAlchemySandboxSessionRepository(
        create_database_engine(f"sqlite:///{tmp_path / 'sandboxd.db'}")
    )
    renewed = stored.renewed(T0 + timedelta(minutes=5), timedelta(minutes=15))
    elsewhere.save(renewed)
    assert repository.get_active_by_chat_id(stored.chat_id) == renewed
    elsewhere.delete(stored.session_id)
    assert repository.get_active_by_chat_id(stored.chat_id) is None
    elsewhere.engine.dispose()


def test_a_database_error_is_a_repository_error_and_the_store_recovers(engine: Engine) -> None:
    repository = SqlAlchemySandboxSessionRepository(engine)
    stored = record()
    repository.save(stored)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE sandbox_sessions RENAME TO moved_away"))
    with pytest.raises(RepositoryUnavailableError, match=r"get_active_by_chat_id failed"):
        repository.get_active_by_chat_id(stored.chat_id)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE moved_away RENAME TO sandbox_sessions"))
    assert repository.get_active_by_chat_id(stored.chat_id) == stored


def test_it_is_refused_on_another_database() -> None:
    lazy = create_database_engine("postgresql+psycopg://sandboxd@127.0.0.1:1/none")  # no connection
    with pytest.raises(ValueError, match="runs on SQLite"):
        SqliteSelect(lazy, sa.select(sandbox_sessions))
