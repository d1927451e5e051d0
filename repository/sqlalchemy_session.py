"""SQLAlchemy session store for PostgreSQL and SQLite: the durable SandboxSessionRepository.

The table is mapped with SQLAlchemy Core and translated to and from the domain's frozen
dataclass here, so the domain never sees the ORM. The schema itself is owned by the Alembic
revisions in ``migrations/``; ``metadata`` below must describe the head revision (a test compares
them).

Every method is one statement, hence one transaction. On PostgreSQL it runs in autocommit: the
statement is its own transaction, without a BEGIN and a COMMIT round trip around it. Database
failures become RepositoryUnavailableError (the URL's password masked) and the statement is
rolled back, so nothing is half-written.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, Engine

from domain.errors import SessionConflictError
from domain.sandbox import CapScope, SandboxCaps, SandboxSession, SandboxStatus
from repository import capped_insert
from repository.database import database_error, translated_errors
from repository.sqlite_select import SqliteSelect

# A record is *current* while its status is one of these. Spelled as literal SQL, identical in
# the index predicates and in the queries, so that PostgreSQL and SQLite can both prove that the
# partial indexes apply (a bound parameter would hide the values from the planner).
CURRENT_STATUSES_SQL = "status IN ('running', 'dead')"
CURRENT_CHAT_INDEX = "uq_sandbox_sessions_current_chat"
EXPIRY_INDEX = "ix_sandbox_sessions_current_expires_at"


class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out. PostgreSQL keeps timestamptz; SQLite stores naive UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: sessions carry timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData()

sandbox_sessions = sa.Table(
    "sandbox_sessions",
    metadata,
    sa.Column("session_id", sa.Uuid(), primary_key=True),
    sa.Column("chat_id", sa.Uuid(), nullable=False),
    sa.Column("runtime_kind", sa.String(32), nullable=False),
    sa.Column("container_id", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Column("last_activity_at", UtcDateTime(), nullable=True),
    sa.Column("max_expires_at", UtcDateTime(), nullable=True),
    # Recorded requirements, one per line (validated: none contains a newline).
    sa.Column("packages", sa.Text(), nullable=False, server_default=""),
    # The tenant that created the chat, and the host that runs its sandbox ("" for older rows).
    sa.Column("owner", sa.String(255), nullable=False, server_default=""),
    sa.Column("node", sa.String(255), nullable=False, server_default=""),
    sa.CheckConstraint("status IN ('running', 'dead')", name="ck_sandbox_sessions_status"),
    # Partial: only current records compete for a chat, so a later archival status (kept for
    # history) may hold any number of old records per chat without a schema change.
    sa.Index(
        CURRENT_CHAT_INDEX,
        "chat_id",
        unique=True,
        postgresql_where=sa.text(CURRENT_STATUSES_SQL),
        sqlite_where=sa.text(CURRENT_STATUSES_SQL),
    ),
    # list_expired: a range scan in (deadline, id) order over current records, no sort step.
    sa.Index(
        EXPIRY_INDEX,
        "expires_at",
        "session_id",
        postgresql_where=sa.text(CURRENT_STATUSES_SQL),
        sqlite_where=sa.text(CURRENT_STATUSES_SQL),
    ),
    sa.Index("ix_sandbox_sessions_created_at", "created_at", "session_id"),
    # count_running per node (and owner); a tenant's listing.
    sa.Index(
        "ix_sandbox_sessions_current_node_owner",
        "node",
        "owner",
        postgresql_where=sa.text(CURRENT_STATUSES_SQL),
        sqlite_where=sa.text(CURRENT_STATUSES_SQL),
    ),
    sa.Index("ix_sandbox_sessions_owner_created_at", "owner", "created_at", "session_id"),
)

_columns = sandbox_sessions.c
_is_current = sa.text(CURRENT_STATUSES_SQL)
_current_by_chat = sa.select(sandbox_sessions).where(
    _columns.chat_id == sa.bindparam("chat_id"), _is_current
)


def _row_values(session: SandboxSession) -> dict[str, Any]:
    return {
        "session_id": session.session_id,
        "chat_id": session.chat_id,
        "runtime_kind": session.runtime_kind,
        "container_id": session.container_id,
        "status": session.status.value,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "last_activity_at": session.last_activity_at,
        "max_expires_at": session.max_expires_at,
        "packages": "\n".join(session.packages),
        "owner": session.owner,
        "node": session.node,
    }


def _to_session(row: sa.Row[Any]) -> SandboxSession:
    return SandboxSession(
        session_id=row.session_id,
        chat_id=row.chat_id,
        container_id=row.container_id,
        status=SandboxStatus(row.status),
        created_at=row.created_at,
        expires_at=row.expires_at,
        runtime_kind=row.runtime_kind,
        last_activity_at=row.last_activity_at,
        max_expires_at=row.max_expires_at,
        packages=tuple(row.packages.split("\n")) if row.packages else (),
        owner=row.owner,
        node=row.node,
    )


# The chat's current record as plain SQL with the chat id inlined (a UUID's canonical text is
# safe to inline): the PostgreSQL chat locker sends it right after the lock, in the lock's own
# round trip (see repository/postgres_lock.py). The same rows as get_active_by_chat_id.
_COLUMN_NAMES = [column.name for column in sandbox_sessions.columns]
_DriverRow = namedtuple("_DriverRow", _COLUMN_NAMES)  # type: ignore[misc]


def current_record_sql(chat_id: UUID) -> str:
    # Inlined: only the UUID's canonical text (hex digits and dashes) enters the SQL.
    return (
        f"SELECT {', '.join(_COLUMN_NAMES)} FROM sandbox_sessions"  # noqa: S608
        f" WHERE chat_id = '{UUID(str(chat_id))}' AND {CURRENT_STATUSES_SQL}"
    )


def session_from_driver_row(values: Sequence[Any]) -> SandboxSession:
    """A row of ``current_record_sql`` as the driver returned it (UUIDs, aware datetimes)."""
    row = _DriverRow(*(v.astimezone(UTC) if isinstance(v, datetime) else v for v in values))
    return _to_session(row)  # type: ignore[arg-type]


class SqlAlchemySandboxSessionRepository:
    """Session records in PostgreSQL or SQLite, behind the SandboxSessionRepository port.

    The one-current-record-per-chat rule is the database's (a partial unique index), so it holds
    across processes and replicas even if a caller skipped the chat lock; breaking it raises
    SessionConflictError. No call is retried here: see the README's retry policy.

    ``fence``, when given, runs before every write (save, delete): the PostgreSQL wiring passes
    the chat locker's ``verify_held``, so a holder whose lock was lost (its connection dropped,
    another replica may own the chat now) changes nothing (LockLostError).

    ``locked_read``, when given, answers get_active_by_chat_id first: the PostgreSQL wiring
    passes the chat locker's ``take_locked_read``, the chat's record as read in the lock's own
    round trip, right after the lock was granted (once per hold, and not after a write).

    ``lock_connection``, when given, hands out the driver connection on which this thread holds
    a chat's lock (None when it holds none): the PostgreSQL wiring passes the chat locker's
    ``held_connection``. ``save_within`` writes on it: a write there commits only while the
    session that holds the lock is alive, so it needs no fence (and no connection of the pool).
    """

    def __init__(
        self,
        engine: Engine,
        fence: Callable[[], None] | None = None,
        locked_read: Callable[[UUID], tuple[bool, SandboxSession | None]] | None = None,
        lock_connection: Callable[[UUID], psycopg.Connection[Any] | None] | None = None,
    ) -> None:
        self._engine = engine
        # Same pool; every method below is a single statement (keep it so: a second one would
        # not share its transaction).
        self._statements = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self._fence = fence
        self._locked_read = locked_read
        self._lock_connection = lock_connection
        self._upsert = self._upsert_statement(engine.dialect.name)
        self._capped = capped_insert.CappedInsert(sandbox_sessions, engine.dialect)
        # SQLite has no lock round trip to carry the chat's record (see locked_read): its read,
        # once per execute, runs precompiled on the driver instead (sqlite_select.py).
        self._current_on_sqlite = (
            SqliteSelect(engine, _current_by_chat) if engine.dialect.name == "sqlite" else None
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    @staticmethod
    def _upsert_statement(dialect: str) -> Any:
        insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(sandbox_sessions)
        updated = {
            name: statement.excluded[name]
            for name in sandbox_sessions.c.keys()  # noqa: SIM118 (ColumnCollection)
            if name != "session_id"
        }
        return statement.on_conflict_do_update(index_elements=["session_id"], set_=updated)

    def save(self, session: SandboxSession) -> None:
        if self._fence is not None:
            self._fence()
        try:
            with self._statements.begin() as connection:
                connection.execute(self._upsert, _row_values(session))
        except exc.IntegrityError as error:
            raise SessionConflictError(
                f"chat {session.chat_id} already has a current session "
                f"(saving {session.session_id})"
            ) from error
        except exc.SQLAlchemyError as error:
            raise database_error(error, self._engine, "save") from error

    def save_within(self, session: SandboxSession, caps: SandboxCaps) -> CapScope | None:
        params = self._capped.params(_row_values(session), session, caps)
        try:
            if self._engine.dialect.name == "postgresql":
                inserted = self._insert_on_postgresql(session, caps, params)
            else:
                if self._fence is not None:
                    self._fence()
                with self._statements.begin() as connection:
                    result = connection.execute(self._capped.statement(caps), params)
                    inserted = result.rowcount == 1
        except (exc.IntegrityError, psycopg.IntegrityError) as error:
            raise SessionConflictError(
                f"chat {session.chat_id} already has a current session "
                f"(saving {session.session_id})"
            ) from error
        except (exc.SQLAlchemyError, psycopg.Error) as error:
            raise database_error(error, self._engine, "save") from error
        if inserted:
            return None
        # Refused (the rare path): which cap is full, for the caller's message.
        if caps.on_node is not None and self.count_running(session.node) >= caps.on_node:
            return CapScope.NODE
        return CapScope.OWNER if caps.per_owner is not None else CapScope.NODE

    def _insert_on_postgresql(
        self, session: SandboxSession, caps: SandboxCaps, params: dict[str, Any]
    ) -> bool:
        insert = self._capped.postgresql(caps, params)
        held = None if self._lock_connection is None else self._lock_connection(session.chat_id)
        if held is not None:
            return capped_insert.run_postgresql(held, insert)
        if self._fence is not None:
            self._fence()
        with self._statements.connect() as connection:
            driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
            try:
                return capped_insert.run_postgresql(driver, insert)
            except psycopg.OperationalError:
                connection.invalidate()  # SQLAlchemy did not see the driver's error
                raise

    def get(self, session_id: UUID) -> SandboxSession | None:
        query = sa.select(sandbox_sessions).where(_columns.session_id == session_id)
        return self._fetch_one(query, "get")

    def get_many(self, session_ids: Iterable[UUID]) -> list[SandboxSession]:
        wanted = list(set(session_ids))
        if not wanted:
            return []
        query = sa.select(sandbox_sessions).where(_columns.session_id.in_(wanted))
        return self._fetch_all(query, "get_many")

    def get_active_by_chat_id(self, chat_id: UUID) -> SandboxSession | None:
        if self._locked_read is not None:
            found, session = self._locked_read(chat_id)
            if found:
                return session
        if self._current_on_sqlite is not None:
            rows = self._current_on_sqlite.rows({"chat_id": chat_id}, "get_active_by_chat_id")
            return _to_session(rows[0]) if rows else None
        return self._fetch_one(_current_by_chat, "get_active_by_chat_id", {"chat_id": chat_id})

    def list_expired(self, now: datetime) -> list[SandboxSession]:
        return self._fetch_all(self.list_expired_query(now), "list_expired")

    @staticmethod
    def list_expired_query(now: datetime) -> sa.Select[Any]:
        """The statement list_expired runs (public so the benchmark can EXPLAIN it)."""
        return (
            sa.select(sandbox_sessions)
            .where(_is_current, _columns.expires_at <= now)
            .order_by(_columns.expires_at, _columns.session_id)
        )

    def list_sessions(
        self,
        status: SandboxStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        owner: str | None = None,
    ) -> list[SandboxSession]:
        query = sa.select(sandbox_sessions)
        if status is not None:
            query = query.where(_columns.status == status.value)
        if owner is not None:
            query = query.where(_columns.owner == owner)
        query = query.order_by(_columns.created_at, _columns.session_id).limit(limit).offset(offset)
        return self._fetch_all(query, "list_sessions")

    def count_running(self, node: str, owner: str | None = None) -> int:
        query = sa.select(sa.func.count()).where(
            _is_current, _columns.status == SandboxStatus.RUNNING.value, _columns.node == node
        )
        if owner is not None:
            query = query.where(_columns.owner == owner)
        with (
            translated_errors(self._engine, "count_running"),
            self._statements.begin() as connection,
        ):
            return int(connection.execute(query).scalar_one())

    def delete(self, session_id: UUID) -> None:
        if self._fence is not None:
            self._fence()
        with translated_errors(self._engine, "delete"), self._statements.begin() as connection:
            connection.execute(sa.delete(sandbox_sessions).where(_columns.session_id == session_id))

    def _fetch_one(
        self, query: sa.Select[Any], doing: str, params: dict[str, Any] | None = None
    ) -> SandboxSession | None:
        with translated_errors(self._engine, doing), self._statements.begin() as connection:
            row = connection.execute(query, params).first()
        return None if row is None else _to_session(row)

    def _fetch_all(self, query: sa.Select[Any], doing: str) -> list[SandboxSession]:
        with translated_errors(self._engine, doing), self._statements.begin() as connection:
            rows = connection.execute(query).all()
        return [_to_session(row) for row in rows]
