"""Chat locks and sweep leadership across every replica that shares one PostgreSQL database.

Session-level advisory locks, each held on a connection of its own for the whole hold: if the
holder's process dies or its connection drops, the server releases the lock by itself. Give
these lockers an engine of their own (see entrypoint/container.py): holders keep their
connection for as long as the chat's work runs, and must not starve the repository's pool.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from uuid import UUID

import psycopg
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import PoolProxiedConnection

from domain.errors import LockLostError, LockTimeoutError
from domain.sandbox import SandboxSession
from repository import libpq
from repository.chat_queue import TimedFifoChatLock
from repository.database import PoolOptions, advisory_key, database_error
from repository.sqlalchemy_session import current_record_sql, session_from_driver_row


def lock_pool_options(
    max_connections: int = 20, wait_s: float = 360.0, connect_timeout_s: float = 5.0
) -> PoolOptions:
    """How chat lock connections are pooled: all kept (one per chat being worked on), no ping
    before use (the lock query finds a dead one itself), autocommit with nothing reset on
    return (so that an unlock need not be waited for: ``unlock_without_waiting``)."""
    return PoolOptions(
        pool_size=max_connections,
        max_overflow=0,
        pool_timeout_s=wait_s,
        connect_timeout_s=connect_timeout_s,
        ping_when_idle=False,
        autocommit=True,
    )


def chat_lock_key(chat_id: UUID) -> int:
    return advisory_key(b"chat:" + chat_id.bytes)


SWEEP_LEADER_KEY = advisory_key(b"sweep-leader")


# pg_locks shows a bigint advisory key as classid (high 32 bits), objid (low 32), objsubid 1.
def _holds_key_sql(key: int) -> str:
    # Only the key's two integer halves enter the SQL.
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return (
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"  # noqa: S608
        " AND pid = pg_backend_pid() AND objsubid = 1"
        f" AND classid = {unsigned >> 32}::oid AND objid = {unsigned & 0xFFFF_FFFF}::oid)"
    )


# A pooled DBAPI connection (the chat locks) or an engine Connection (the sweep leader).
_Pooled = PoolProxiedConnection | Connection


def _release(connection: _Pooled, key: int) -> None:
    try:
        # One simple-protocol statement through libpq: this runs once per execute.
        libpq.first_row(_driver(connection), f"SELECT pg_advisory_unlock({int(key)})")
    except (exc.SQLAlchemyError, psycopg.Error):
        # The connection is broken, so the server has dropped (or will drop, on seeing it
        # close) the session and its lock. Raising here would hide the caller's own outcome.
        connection.invalidate()


# Set on a pooled lock connection whose unlock was sent but not yet read (_release_later).
_UNLOCK_PENDING = "sandboxd_unlock_pending"


def _release_later(connection: PoolProxiedConnection, key: int) -> None:
    """Send the unlock and hand the connection back without waiting for the answer: the chat's
    next holder waits on the server's lock anyway, and the answer has usually arrived by the
    time the connection is checked out again (``_settle_pending_unlock`` reads it then). Saves
    a round trip's wait on every execute."""
    try:
        libpq.send(_driver(connection), f"SELECT pg_advisory_unlock({int(key)})")
    except psycopg.Error:
        connection.invalidate()  # as _release: the server lets go of a dead session's locks
        return
    connection.info[_UNLOCK_PENDING] = True


def _settle_pending_unlock(dbapi_connection: object, record: object, _proxy: object) -> None:
    """Pool checkout listener of the lock engine: read a sent unlock's answer before anyone
    (a chat lock, the sweep leader) uses the connection; a connection that failed it is
    replaced (SQLAlchemy's DisconnectionError: the pool discards it and checks out another)."""
    if not record.info.pop(_UNLOCK_PENDING, False):  # type: ignore[attr-defined]
        return
    try:
        libpq.settle(dbapi_connection)  # type: ignore[arg-type]
    except psycopg.Error as error:
        raise exc.DisconnectionError(f"a lock connection's unlock failed: {error}") from error


def _driver(connection: _Pooled) -> psycopg.Connection[tuple[object, ...]]:
    if isinstance(connection, Connection):
        connection = connection.connection
    driver: psycopg.Connection[tuple[object, ...]] = connection.driver_connection  # type: ignore[assignment]
    return driver


class _BrokenConnectionError(Exception):
    """The lock query failed because its pooled connection was dead (``error`` says how)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


# What a hold has read in its lock's round trip: consumed by the first read, dropped by a write.
_UNREAD = object()


@dataclass(slots=True)
class _Hold:
    connection: PoolProxiedConnection
    key: int
    record: SandboxSession | object | None = _UNREAD


class PostgresAdvisorySandboxLifecycleLocker:
    """pg_advisory_lock keyed from the chat UUID; FIFO within the process, bounded wait.

    The PostgreSQL lock manager queues waiters on one lock in arrival order, so across replicas
    the order is close to FIFO as well. The whole wait (in-process queue, a pool connection, the
    advisory lock) is bounded by ``timeout_s``; past it LockTimeoutError. An unreachable server
    raises RepositoryUnavailableError.

    The lock lives as long as its connection: if that drops (server restart, network cut,
    pg_terminate_backend), another replica may take the chat. So ``verify_held`` asks the
    server, on the holder's own connection, whether this thread's locks are still held, and the
    session store calls it before every write (LockLostError when not).

    The lock and the chat's current record come in one round trip: set lock_timeout, take the
    lock, read the record, as three statements of one simple-protocol query. Each statement has
    a snapshot of its own, so the read sees everything the previous holder committed before it
    let go (a single statement's snapshot would predate the wait for the lock). The session
    store answers its next get_active_by_chat_id for the chat with it (``take_locked_read``):
    what a read issued right after the lock would return, without another round trip.
    """

    def __init__(
        self, engine: Engine, timeout_s: float = 360.0, *, unlock_without_waiting: bool = False
    ) -> None:
        """``unlock_without_waiting`` (``_release_later``) needs an engine whose pool resets
        nothing on return (``PoolOptions(autocommit=True)``, as persistence.lock_engine makes
        it): a rollback on return would meet the unlock still in flight."""
        self._engine = engine
        self._timeout_s = timeout_s
        self._unlock = _release_later if unlock_without_waiting else _release
        if unlock_without_waiting and not event.contains(
            engine, "checkout", _settle_pending_unlock
        ):
            event.listen(engine, "checkout", _settle_pending_unlock)
        self._local = TimedFifoChatLock()
        # Per thread: chat -> the hold (connection, key, record read) of the locks it holds now.
        self._held = threading.local()

    def with_timeout(self, timeout_s: float) -> PostgresAdvisorySandboxLifecycleLocker:
        """The same locks (one in-process queue, one record of holders), another wait bound."""
        view = copy.copy(self)
        view._timeout_s = timeout_s
        return view

    @contextmanager
    def lock(self, chat_id: UUID) -> Iterator[None]:
        deadline = time.monotonic() + self._timeout_s
        self._local.acquire(chat_id, deadline)
        try:
            key = chat_lock_key(chat_id)
            hold = self._acquire(chat_id, key, deadline)
            held = self._holdings()
            held[chat_id] = hold
            try:
                yield
            finally:
                held.pop(chat_id, None)
                self._unlock(hold.connection, key)
                hold.connection.close()
        finally:
            self._local.release(chat_id)

    def take_locked_read(self, chat_id: UUID) -> tuple[bool, SandboxSession | None]:
        """(True, the chat's current record as read with its lock) once per hold by this
        thread; (False, None) when this thread does not hold it, or has read or written since."""
        hold = self._holdings().get(chat_id)
        if hold is None or hold.record is _UNREAD:
            return False, None
        record, hold.record = hold.record, _UNREAD
        return True, record  # type: ignore[return-value]

    def held_connection(self, chat_id: UUID) -> psycopg.Connection[tuple[object, ...]] | None:
        """The driver connection on which this thread holds the chat's lock (autocommit), for a
        write that needs no fence: it commits only while the lock's session lives. None when
        this thread does not hold it. What the hold read with its lock is dropped (a write)."""
        hold = self._holdings().get(chat_id)
        if hold is None:
            return None
        hold.record = _UNREAD
        return _driver(hold.connection)

    def verify_held(self) -> None:
        """Raise LockLostError unless every chat lock this thread holds is still held.

        Called before every write: what the holds read with their locks is dropped first, so
        that no read after a write answers from before it.
        """
        holdings = list(self._holdings().items())
        for _, hold in holdings:
            hold.record = _UNREAD
        for chat_id, hold in holdings:
            try:
                # The lock engine runs in autocommit: one statement, no transaction around it.
                row = libpq.first_row(_driver(hold.connection), _holds_key_sql(hold.key))
                held = row is not None and bool(row[0])
            except psycopg.Error as error:
                raise LockLostError(
                    f"chat {chat_id}: the lock's database connection failed"
                ) from error
            if not held:
                raise LockLostError(f"chat {chat_id}: the lock is no longer held")

    def _holdings(self) -> dict[UUID, _Hold]:
        held: dict[UUID, _Hold] | None = getattr(self._held, "chats", None)
        if held is None:
            held = self._held.chats = {}
        return held

    def _acquire(self, chat_id: UUID, key: int, deadline: float) -> _Hold:
        """Lock and read on a pooled connection, which is not pinged before use (its engine
        has no ping: that round trip was on every lock of a chat idle for a second). One found
        broken (the server restarted, the backend was terminated) fails the query itself: the
        pool is then replaced, since its other connections are most likely as stale, and the
        lock is taken once more on a new connection. Both fail: RepositoryUnavailableError."""
        try:
            return self._try_acquire(chat_id, key, deadline)
        except _BrokenConnectionError:
            self._engine.dispose()  # closes the idle ones; those in use leave with their holders
        try:
            return self._try_acquire(chat_id, key, deadline)
        except _BrokenConnectionError as broken:
            raise broken.error from broken.error.__cause__

    def _try_acquire(self, chat_id: UUID, key: int, deadline: float) -> _Hold:
        try:
            # The pool's own connection, without an engine Connection around it: the lock
            # engine is in autocommit and resets nothing on return (entrypoint/persistence.py).
            connection = self._engine.raw_connection()
        except exc.TimeoutError as error:
            raise self._timeout(chat_id, "no free lock connection") from error
        except (exc.SQLAlchemyError, psycopg.Error) as error:
            # The pool hands the driver's own connect error on unwrapped.
            raise database_error(error, self._engine, "chat lock") from error
        # lock_timeout is set for the session, which every hold on these connections sets
        # afresh; 0 would mean "wait forever".
        wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
        query = (
            f"SELECT set_config('lock_timeout', '{wait_ms}ms', false);"
            f" SELECT pg_advisory_lock({int(key)}); {current_record_sql(chat_id)}"
        )
        driver = _driver(connection)
        if not driver.autocommit:
            # An engine not made for these locks (persistence.lock_engine's is in autocommit):
            # no transaction may stay open around a session-level lock, and a write on the
            # held connection (held_connection) must commit by itself. Idle: no round trip.
            driver.autocommit = True
        try:
            # Three statements, one round trip; the record is the last result.
            row = libpq.first_row(driver, query)
        except psycopg.errors.LockNotAvailable as error:
            connection.close()
            raise self._timeout(chat_id, "held by another request") from error
        except BaseException as error:
            # The lock may be held (a failure after it): only dropping the connection makes
            # sure the server lets it go.
            connection.invalidate()
            connection.close()
            if isinstance(error, psycopg.Error):
                unavailable = database_error(error, self._engine, "chat lock")
                unavailable.__cause__ = error
                if driver.broken:
                    raise _BrokenConnectionError(unavailable) from error
                raise unavailable from error
            raise
        return _Hold(connection, key, None if row is None else session_from_driver_row(row))

    def _timeout(self, chat_id: UUID, why: str) -> LockTimeoutError:
        return LockTimeoutError(
            f"chat {chat_id}: lock wait timed out after {self._timeout_s:g} s ({why})"
        )


class PostgresAdvisorySweepLeaderLock:
    """ "One replica sweeps at a time": pg_try_advisory_lock on a fixed key, never waits."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextmanager
    def try_lead(self) -> Iterator[bool]:
        """Yield True while this caller is the only sweeper, False (at once) if another is.

        Raises RepositoryUnavailableError when the database cannot be reached.
        """
        try:
            connection = self._engine.connect()
        except exc.SQLAlchemyError as error:
            raise database_error(error, self._engine, "sweep leader lock") from error
        try:
            with connection.begin():
                leading = bool(
                    connection.execute(
                        sa.select(sa.func.pg_try_advisory_lock(SWEEP_LEADER_KEY))
                    ).scalar_one()
                )
        except exc.SQLAlchemyError as error:
            connection.close()
            raise database_error(error, self._engine, "sweep leader lock") from error
        try:
            yield leading
        finally:
            if leading:
                _release(connection, SWEEP_LEADER_KEY)
            connection.close()
