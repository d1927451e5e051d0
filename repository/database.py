"""Database plumbing shared by the SQLAlchemy store and the database-backed lockers.

Engines for PostgreSQL (psycopg 3) and SQLite, URL masking for messages, error translation into
the project's errors, and the schema gate: Alembic in ``migrations/`` owns the schema, and
nothing runs on a database whose revision is not the head one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

from domain.errors import RepositoryUnavailableError, StorageFullError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# A pooled PostgreSQL connection unused for longer than this is pinged before it is handed out.
PING_AFTER_IDLE_S = 1.0
_IDLE_SINCE = "sandboxd_idle_since"
_DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full


def advisory_key(name: bytes) -> int:
    """A stable signed 64-bit key (PostgreSQL's bigint) for a name; same in every process."""
    digest = hashlib.blake2b(b"sandboxd:" + name, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SchemaOutOfDateError(RepositoryUnavailableError):
    """The database's schema revision is not the code's head revision; nothing may run on it."""


@dataclass(frozen=True)
class PoolOptions:
    """Connection pool and timeout knobs (PostgreSQL); SQLite only uses ``busy_timeout_s``."""

    pool_size: int = 5
    max_overflow: int = 10
    pool_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    busy_timeout_s: float = 5.0
    # Ping a pooled connection idle past PING_AFTER_IDLE_S before handing it out. The chat
    # locker's engine does without: its lock query finds a dead connection itself, and it
    # retries once on a new pool (PostgresAdvisorySandboxLifecycleLocker).
    ping_when_idle: bool = True
    # Every statement its own transaction, and nothing reset when a connection goes back to the
    # pool (there is no transaction to roll back): the chat locks' engine, whose connections
    # hold session-level advisory locks and are checked out twice per execute.
    autocommit: bool = False


def mask_url(url: str | URL) -> str:
    """The URL as it may appear in logs and error messages: the password replaced by ***."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except exc.ArgumentError:
        return "<unparseable database URL>"
    return parsed.render_as_string(hide_password=True)


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_postgresql(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def sqlite_path(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for an in-memory database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return Path(database)


def create_database_engine(url: str, options: PoolOptions | None = None) -> Engine:
    """An engine for a ``postgresql+psycopg://`` or ``sqlite:///`` URL; connects lazily.

    SQLite: the file's directory is created, and every connection uses WAL (readers do not block
    the writer, and several processes may share the file) and waits ``busy_timeout_s`` for a
    writer instead of failing at once. PostgreSQL: a connection idle for more than
    PING_AFTER_IDLE_S is pinged before use (and replaced if dead), so a server restart between
    calls costs nothing but a reconnect; one used moments ago is not, which takes the ping's
    round trip off every call under load.
    """
    options = options or PoolOptions()
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, options)
    if backend == "postgresql":
        if parsed.get_driver_name() not in ("psycopg", "psycopg_async"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        autocommit: dict[str, Any] = (
            {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None}
            if options.autocommit
            else {}
        )
        engine = sa.create_engine(
            parsed,
            **autocommit,
            pool_size=options.pool_size,
            max_overflow=options.max_overflow,
            pool_timeout=options.pool_timeout_s,
            connect_args={
                "connect_timeout": max(1, round(options.connect_timeout_s)),
                "application_name": "sandboxd",
                # A peer that vanished (host down, network cut) is noticed within ~25 s instead
                # of the kernel's two hours: lock holders keep their connection for a whole
                # execution, and a dead one must not pass for a held lock.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            },
        )
        if options.ping_when_idle:
            _ping_when_idle(engine)
        return engine
    raise RepositoryUnavailableError(
        f"unsupported database URL {mask_url(parsed)}: use postgresql+psycopg:// or sqlite:///"
    )


def _ping_when_idle(engine: Engine) -> None:
    """pool_pre_ping, but only for connections idle longer than PING_AFTER_IDLE_S.

    A dead connection found by the ping raises DisconnectionError, on which the pool discards
    it and checks out another (SQLAlchemy's documented pessimistic disconnect handling). One
    that died within the last moments fails its call with RepositoryUnavailableError, as it
    would have mid-call anyway, and the pool drops it (and every older connection) then.
    """

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return  # fresh from connect, or used moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise exc.DisconnectionError(f"stale pooled connection: {error}") from error


def _sqlite_engine(url: URL, options: PoolOptions) -> Engine:
    path = sqlite_path(url)
    kwargs: dict[str, Any] = {}
    if path is None:
        # One shared connection, or every checkout would see its own empty database.
        kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RepositoryUnavailableError(
                f"cannot create the directory of database {mask_url(url)}: {error}"
            ) from error
    engine = sa.create_engine(url, **kwargs)
    busy_ms = int(options.busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if path is not None:
                cursor.execute("PRAGMA journal_mode = WAL")
                # WAL makes NORMAL durable against application crashes; only an OS crash may
                # lose the last commits, which reconciliation repairs.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    return engine


def is_storage_full(error: BaseException) -> bool:
    """True when a write failed for want of space: SQLite's SQLITE_FULL, PostgreSQL's disk_full
    (SQLSTATE 53100), or ENOSPC / EDQUOT from the filesystem."""
    cause = getattr(error, "orig", None) or error
    if isinstance(cause, sqlite3.Error):
        return getattr(cause, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
    if getattr(cause, "sqlstate", None) == _DISK_FULL:
        return True
    return isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)


def database_error(error: BaseException, engine: Engine, doing: str) -> RepositoryUnavailableError:
    """A RepositoryUnavailableError for a failed database call, naming the URL without password;
    StorageFullError when the database's disk is full."""
    cause = getattr(error, "orig", None) or error
    detail = " ".join(str(cause).split()) or type(cause).__name__
    password = engine.url.password
    if password:
        detail = detail.replace(str(password), "***")
    kind = StorageFullError if is_storage_full(error) else RepositoryUnavailableError
    return kind(f"database {mask_url(engine.url)} {doing} failed: {detail}")


@contextmanager
def translated_errors(engine: Engine, doing: str) -> Iterator[None]:
    """Turn SQLAlchemy and driver errors raised inside into RepositoryUnavailableError."""
    try:
        yield
    except exc.SQLAlchemyError as error:
        raise database_error(error, engine, doing) from error


# Alembic ------------------------------------------------------------------------------------


def alembic_config(connection: sa.Connection | None = None, url: str | None = None) -> Config:
    """Alembic configuration built in code, so ``sandboxd migrate`` needs no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolates %; a password may contain it.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with translated_errors(engine, "reading the schema revision"), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision``; one transaction on PostgreSQL."""
    with translated_errors(engine, "migration"), engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    with translated_errors(engine, "migration"), engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def check_schema_current(engine: Engine) -> None:
    """Raise SchemaOutOfDateError unless the database is at the head revision.

    Also raises RepositoryUnavailableError (naming the masked URL) when the database is down.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        state = "has no sandboxd schema"
    elif current in _known_revisions():
        state = f"is at revision {current}, behind {head}"
    else:
        raise SchemaOutOfDateError(
            f"database {mask_url(engine.url)} is at revision {current}, which this version of "
            f"sandboxd does not know (head {head}): it was migrated by a newer sandboxd"
        )
    raise SchemaOutOfDateError(f"database {mask_url(engine.url)} {state}; run: sandboxd migrate")


def _known_revisions() -> set[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return {revision.revision for revision in script.walk_revisions()}


def prepare_database(engine: Engine, auto_migrate: bool) -> Engine:
    """Migrate to head when ``auto_migrate`` (the embedded SQLite default), else only check.

    A database at a revision this code does not know is never touched: check_schema_current
    reports it.
    """
    if auto_migrate and _behind(current_revision(engine)):
        with _migration_guard(engine):
            # Another process may have migrated while we waited for the guard.
            if _behind(current_revision(engine)):
                migrate(engine)
    check_schema_current(engine)
    return engine


def _behind(current: str | None) -> bool:
    return current != head_revision() and (current is None or current in _known_revisions())


@contextmanager
def _migration_guard(engine: Engine) -> Iterator[None]:
    """Serialize self-migrations of one SQLite file across processes.

    SQLite runs Alembic's DDL outside a transaction, so two first starts at once would both
    create the table. PostgreSQL needs no guard: its migration is one transaction.
    """
    path = sqlite_path(engine.url) if is_sqlite(engine.url) else None
    if path is None:
        yield
        return
    with open(f"{path}.migrate.lock", "a+b") as guard:
        fcntl.flock(guard.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard.fileno(), fcntl.LOCK_UN)
