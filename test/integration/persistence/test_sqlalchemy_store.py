"""What only the SQL stores promise: UTC normalisation, database-enforced uniqueness, the
indexes the queries use, and clean failures when the database is down or lost mid-call."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from domain.errors import RepositoryUnavailableError
from domain.sandbox import SandboxSession, SandboxStatus
from repository.database import create_database_engine
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sqlalchemy_session import (
    CURRENT_CHAT_INDEX,
    EXPIRY_INDEX,
    SqlAlchemySandboxSessionRepository,
    sandbox_sessions,
)
from usecase.sandbox import CreateSandbox, CreateSandboxCommand

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SQL_STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=SQL_STORES)
def engine(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.getfixturevalue(f"{request.param}_engine")
    with engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
    return engine


def make_session(expires: timedelta = timedelta(minutes=15), **changes) -> SandboxSession:
    values: dict[str, Any] = {
        "session_id": uuid4(),
        "chat_id": uuid4(),
        "container_id": "c",
        "status": SandboxStatus.RUNNING,
        "created_at": T0,
        "expires_at": T0 + expires,
        "runtime_kind": "docker",
    }
    values.update(changes)
    return SandboxSession(**values)


def test_times_are_returned_in_utc(engine: Engine) -> None:
    repository = SqlAlchemySandboxSessionRepository(engine)
    plus_five = timezone(timedelta(hours=5))
    stored = make_session(
        created_at=datetime(2026, 3, 1, 17, 0, tzinfo=plus_five),
        last_activity_at=datetime(2026, 3, 1, 17, 1, tzinfo=plus_five),
        max_expires_at=datetime(2026, 3, 1, 21, 0, tzinfo=plus_five),
    )
    repository.save(stored)
    loaded = repository.get(stored.session_id)
    assert loaded is not None
    for value in (
        loaded.created_at,
        loaded.expires_at,
        loaded.last_activity_at,
        loaded.max_expires_at,
    ):
        assert value is not None and value.tzinfo is UTC
    assert loaded.created_at == T0


def test_a_naive_time_is_refused_and_nothing_is_written(engine: Engine) -> None:
    repository = SqlAlchemySandboxSessionRepository(engine)
    naive = make_session(created_at=datetime(2026, 3, 1, 12, 0))  # noqa: DTZ001
    with pytest.raises(RepositoryUnavailableError, match="naive datetime"):
        repository.save(naive)
    assert repository.get(naive.session_id) is None


def test_the_one_current_record_per_chat_rule_is_a_partial_unique_index(engine: Engine) -> None:
    indexes = {index["name"]: index for index in sa.inspect(engine).get_indexes("sandbox_sessions")}
    assert indexes[CURRENT_CHAT_INDEX]["unique"]
    assert indexes[CURRENT_CHAT_INDEX]["column_names"] == ["chat_id"]
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            definition = connection.execute(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                {"name": CURRENT_CHAT_INDEX},
            ).scalar_one()
        else:
            definition = connection.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE name = :name"),
                {"name": CURRENT_CHAT_INDEX},
            ).scalar_one()
    assert "WHERE" in definition.upper() and "running" in definition and "dead" in definition


def explain(engine: Engine, statement: sa.Select) -> str:
    compiled = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN" if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"{prefix} {compiled}").all()
    return "\n".join(" ".join(str(column) for column in row) for row in rows)


def test_list_expired_and_chat_lookup_use_their_indexes(engine: Engine) -> None:
    rows = [
        {
            "session_id": uuid4(),
            "chat_id": uuid4(),
            "runtime_kind": "docker",
            "container_id": "c",
            "status": "running",
            "created_at": T0,
            "expires_at": T0 + timedelta(seconds=n),
        }
        for n in range(5000)
    ]
    with engine.begin() as connection:
        connection.execute(sa.insert(sandbox_sessions), rows)
        connection.exec_driver_sql("ANALYZE")
    repository = SqlAlchemySandboxSessionRepository(engine)
    now = T0 + timedelta(seconds=49)
    assert [s.session_id for s in repository.list_expired(now)] == [
        r["session_id"] for r in rows[:50]
    ]
    assert EXPIRY_INDEX in explain(engine, repository.list_expired_query(now))
    by_chat = sa.select(sandbox_sessions).where(
        sandbox_sessions.c.chat_id == rows[7]["chat_id"], sa.text("status IN ('running', 'dead')")
    )
    assert CURRENT_CHAT_INDEX in explain(engine, by_chat)


def test_database_down_names_the_url_without_its_password(engine: Engine, tmp_path) -> None:
    url = engine.url.set(password="s3cret-pw")
    if engine.dialect.name == "postgresql":
        url = url.set(host="127.0.0.1", port=1)
    else:
        not_a_directory = tmp_path / "a-file"
        not_a_directory.write_text("")
        url = url.set(database=str(not_a_directory / "sandboxd.db"))
    with pytest.raises(RepositoryUnavailableError) as raised:
        down = create_database_engine(url.render_as_string(hide_password=False))
        SqlAlchemySandboxSessionRepository(down).get(uuid4())
    message = str(raised.value)
    assert "s3cret-pw" not in message
    if engine.dialect.name == "postgresql":
        assert "postgresql+psycopg://sandboxd:***@127.0.0.1:1/" in message


@pytest.mark.postgres
def test_connection_lost_mid_save_writes_nothing_and_the_store_recovers(
    postgres_engine: Engine, postgres_url: str
) -> None:
    with postgres_engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
    engine = create_database_engine(postgres_url)
    kill_next_insert = threading.Event()

    @event.listens_for(engine, "before_cursor_execute")
    def _kill(connection, cursor, statement, parameters, context, executemany) -> None:
        if kill_next_insert.is_set() and statement.lstrip().upper().startswith("INSERT"):
            kill_next_insert.clear()
            pid = connection.connection.dbapi_connection.info.backend_pid
            with postgres_engine.connect() as admin:
                admin.execute(sa.select(sa.func.pg_terminate_backend(pid)))

    repository = SqlAlchemySandboxSessionRepository(engine)
    lost = make_session()
    kill_next_insert.set()
    with pytest.raises(RepositoryUnavailableError, match=r"sandboxd:\*\*\*@"):
        repository.save(lost)
    assert SqlAlchemySandboxSessionRepository(postgres_engine).get(lost.session_id) is None
    # The broken connection was discarded: the very next call works.
    kept = make_session(chat_id=lost.chat_id)
    repository.save(kept)
    assert repository.get_active_by_chat_id(lost.chat_id) == kept
    engine.dispose()


class CountingRuntime:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.stopped: list[str] = []

    def create(self, *, session_id, chat_id, created_at, expires_at) -> SandboxSession:
        container_id = f"box-{len(self.created)}"
        self.created.append(container_id)
        return SandboxSession(
            session_id, chat_id, container_id, SandboxStatus.RUNNING, created_at, expires_at
        )

    def stop(self, container_id: str) -> None:
        self.stopped.append(container_id)


class FixedClock:
    def now(self) -> datetime:
        return T0


class NullLogger:
    def debug(self, message, attrs=None) -> None: ...
    def info(self, message, attrs=None) -> None: ...
    def warning(self, message, attrs=None) -> None: ...
    def error(self, message, attrs=None) -> None: ...


@pytest.mark.postgres
def test_create_sandbox_with_the_database_gone_fails_cleanly_and_leaks_nothing(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_database_engine(postgres_url)
    repository = SqlAlchemySandboxSessionRepository(engine)
    runtime = CountingRuntime()
    create = CreateSandbox(
        repository,
        ProcessLocalSandboxLifecycleLocker(),
        runtime,  # type: ignore[arg-type]  # CreateSandbox only creates and stops
        FixedClock(),
        NullLogger(),
        ttl=timedelta(minutes=15),
    )
    chat_id = uuid4()

    send = psycopg.Cursor.execute

    def _kill(cursor, query, *args, **kwargs):
        # The driver's own call (SQLAlchemy's statements and the store's raw ones alike).
        if "INSERT INTO" in str(query).upper():
            cursor.connection.close()  # as if the server went away
        return send(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", _kill)
    with pytest.raises(RepositoryUnavailableError):
        create.execute(CreateSandboxCommand(chat_id))
    assert runtime.created == ["box-0"] and runtime.stopped == ["box-0"]
    monkeypatch.undo()
    assert repository.get_active_by_chat_id(chat_id) is None
    engine.dispose()
