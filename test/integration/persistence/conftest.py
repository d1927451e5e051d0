"""Fixtures: a private PostgreSQL database for the session, SQLite files under tmp, and each
store and locker implementation as a parameter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from repository.database import create_database_engine, migrate
from repository.file_lock import FileSandboxLifecycleLocker
from repository.postgres_lock import PostgresAdvisorySandboxLifecycleLocker, lock_pool_options
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository, sandbox_sessions
from testkit.pg import server_url, temporary_database


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of an empty database of this test session's own (no schema)."""
    try:
        database = temporary_database()
        url = database.__enter__()
    except sa.exc.OperationalError as error:
        pytest.fail(
            f"PostgreSQL at {server_url().render_as_string(hide_password=True)} is not usable "
            f"({error.orig}); scripts/setup.sh postgres starts it, or set "
            "SANDBOXD_TEST_POSTGRES_URL"
        )
    try:
        yield url
    finally:
        database.__exit__(None, None, None)


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    """An engine on the session's database, migrated to head."""
    engine = create_database_engine(postgres_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path = tmp_path_factory.mktemp("sqlite") / "sandboxd.db"
    engine = create_database_engine(f"sqlite:///{path}")
    migrate(engine)
    yield engine
    engine.dispose()


def _empty(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))


STORES = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def repository(store_kind: str, request: pytest.FixtureRequest):
    """Each implementation of SandboxSessionRepository, empty."""
    if store_kind == "memory":
        return InMemorySandboxSessionRepository()
    engine: Engine = request.getfixturevalue(f"{store_kind}_engine")
    _empty(engine)
    return SqlAlchemySandboxSessionRepository(engine)


LOCKERS = [
    "process",
    "file",
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=LOCKERS)
def locker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_locker(locker_kind: str, tmp_path: Path, request: pytest.FixtureRequest):
    """Factory for lockers of the parametrized kind that share one scope (dir or database)."""
    engines: list[Engine] = []
    process_local = ProcessLocalSandboxLifecycleLocker()

    def make(timeout_s: float = 30.0):
        if locker_kind == "process":
            return process_local  # its scope is the instance
        if locker_kind == "file":
            return FileSandboxLifecycleLocker(tmp_path / "locks", timeout_s=timeout_s)
        # Migrated: the lock's round trip also reads the chat's record (sandbox_sessions).
        request.getfixturevalue("postgres_engine")
        url: str = request.getfixturevalue("postgres_url")
        # As the service wires it (entrypoint/persistence.py).
        engine = create_database_engine(url, lock_pool_options())
        engines.append(engine)
        return PostgresAdvisorySandboxLifecycleLocker(
            engine, timeout_s=timeout_s, unlock_without_waiting=True
        )

    yield make
    for engine in engines:
        engine.dispose()
