"""Choosing the session store, the chat locker and the sweep leader from the database URL.

- ``postgresql+psycopg://``: SQLAlchemy store, advisory-lock locker and leader on a pool of their
  own. The schema is never changed implicitly: a database behind head refuses to serve until
  ``sandboxd migrate`` has run (several replicas must not race to migrate).
- ``sqlite:///FILE`` (the embedded default, ``<data_dir>/sandboxd.db``): SQLAlchemy store,
  migrated to head on first use (a single-user default should just work); per-chat lock files
  and the leader lock file in the ``locks`` directory beside the database file.
- ``sqlite://`` (in memory): one process only, so the process-local locker and leader.
SANDBOXD_DATABASE_AUTO_MIGRATE=true/false overrides the migrate-on-start choice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from entrypoint.settings import Settings
from repository.database import (
    PoolOptions,
    create_database_engine,
    is_postgresql,
    is_sqlite,
    prepare_database,
    sqlite_path,
)
from repository.file_lock import FileSandboxLifecycleLocker, FileSweepLeaderLock
from repository.postgres_lock import (
    PostgresAdvisorySandboxLifecycleLocker,
    PostgresAdvisorySweepLeaderLock,
    lock_pool_options,
)
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository
from repository.sweep_leader import ProcessLocalSweepLeaderLock
from usecase.ports import SandboxLifecycleLocker, SandboxSessionRepository, SweepLeader

EngineProvider = Callable[[], Engine]


def database_engine(settings: Settings) -> Engine:
    """The repository's engine, unchecked (``sandboxd migrate`` uses it as it is)."""
    return create_database_engine(
        settings.effective_database_url,
        PoolOptions(
            pool_size=settings.database.pool_size,
            max_overflow=settings.database.max_overflow,
            pool_timeout_s=settings.database.pool_timeout_seconds,
            connect_timeout_s=settings.database.connect_timeout_seconds,
            busy_timeout_s=settings.database.sqlite_busy_timeout_seconds,
        ),
    )


def auto_migrate(settings: Settings) -> bool:
    if settings.database.auto_migrate is not None:
        return settings.database.auto_migrate
    return is_sqlite(settings.effective_database_url)


def ready_engine(engine: Engine, settings: Settings) -> Engine:
    """The engine once the schema is at head (migrated here if auto_migrate), else an error."""
    return prepare_database(engine, auto_migrate(settings))


def session_repository(engine: Engine, locker: SandboxLifecycleLocker) -> SandboxSessionRepository:
    # On PostgreSQL a lock holder checks it still holds its chat's lock before every write, and
    # the first read under a lock is the one that came with the lock.
    if isinstance(locker, PostgresAdvisorySandboxLifecycleLocker):
        return SqlAlchemySandboxSessionRepository(
            engine=engine,
            fence=locker.verify_held,
            locked_read=locker.take_locked_read,
            lock_connection=locker.held_connection,
        )
    return SqlAlchemySandboxSessionRepository(engine=engine)


def lock_engine(settings: Settings) -> Engine:
    return create_database_engine(
        settings.effective_database_url,
        lock_pool_options(
            settings.locks.max_connections,
            settings.locks.timeout_seconds,
            settings.database.connect_timeout_seconds,
        ),
    )


def lock_dir(settings: Settings) -> Path | None:
    """Where the SQLite setup keeps its lock files; None for an in-memory database."""
    path = sqlite_path(settings.effective_database_url)
    return None if path is None else path.parent / "locks"


def chat_locker(settings: Settings, lock_engine_provider: EngineProvider) -> SandboxLifecycleLocker:
    url = settings.effective_database_url
    if is_postgresql(url):
        return PostgresAdvisorySandboxLifecycleLocker(
            # lock_engine's pool resets nothing on return: the unlock need not be waited for.
            lock_engine_provider(),
            timeout_s=settings.locks.timeout_seconds,
            unlock_without_waiting=True,
        )
    directory = lock_dir(settings)
    if directory is None:
        return ProcessLocalSandboxLifecycleLocker()
    return FileSandboxLifecycleLocker(directory, timeout_s=settings.locks.timeout_seconds)


def sweep_leader(settings: Settings, lock_engine_provider: EngineProvider) -> SweepLeader:
    if is_postgresql(settings.effective_database_url):
        return PostgresAdvisorySweepLeaderLock(lock_engine_provider())
    directory = lock_dir(settings)
    if directory is None:
        return ProcessLocalSweepLeaderLock()
    return FileSweepLeaderLock(directory)


def short_wait_locker(locker: SandboxLifecycleLocker, wait_s: float) -> SandboxLifecycleLocker:
    """The same locks with a short wait, for the sweep (every locker here has with_timeout)."""
    with_timeout = getattr(locker, "with_timeout", None)
    return locker if with_timeout is None else with_timeout(wait_s)
