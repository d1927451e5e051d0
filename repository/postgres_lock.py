"""Chat locks and sweep leadership across every replica that shares one PostgreSQL database.

Session-level advisory locks, each held on a connection of its own for the whole hold: if the
holder's process dies or its connection drops, the server releases the lock by itself. Give
these lockers an engine of their own (see entrypoint/container.py): holders keep their
connection for as long as the chat's work runs, and must not starve the repository's pool.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Engine

from domain.errors import LockLostError, LockTimeoutError
from repository.chat_queue import TimedFifoChatLock
from repository.database import database_error

_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE raised when lock_timeout runs out


def advisory_key(name: bytes) -> int:
    """A stable signed 64-bit key (PostgreSQL's bigint) for a name; same in every process."""
    digest = hashlib.blake2b(b"sandboxd:" + name, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def chat_lock_key(chat_id: UUID) -> int:
    return advisory_key(b"chat:" + chat_id.bytes)


SWEEP_LEADER_KEY = advisory_key(b"sweep-leader")

# pg_locks shows a bigint advisory key as classid (high 32 bits), objid (low 32), objsubid 1.
_HOLDS_KEY = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND pid = pg_backend_pid() AND objsubid = 1"
    " AND classid = CAST(:high AS oid) AND objid = CAST(:low AS oid))"
)


def _key_parts(key: int) -> dict[str, int]:
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF}


def _release(connection: Connection, key: int) -> None:
    try:
        connection.execute(sa.select(sa.func.pg_advisory_unlock(key)))
    except exc.SQLAlchemyError:
        # The connection is broken, so the server has dropped (or will drop, on seeing it
        # close) the session and its lock. Raising here would hide the caller's own outcome.
        connection.invalidate()


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
    """

    def __init__(self, engine: Engine, timeout_s: float = 360.0) -> None:
        self._engine = engine
        self._timeout_s = timeout_s
        self._local = TimedFifoChatLock()
        # Per thread: chat -> (connection, key) of the locks it holds now.
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
            connection = self._acquire(chat_id, key, deadline)
            held = self._holdings()
            held[chat_id] = (connection, key)
            try:
                yield
            finally:
                held.pop(chat_id, None)
                _release(connection, key)
                connection.close()
        finally:
            self._local.release(chat_id)

    def verify_held(self) -> None:
        """Raise LockLostError unless every chat lock this thread holds is still held."""
        for chat_id, (connection, key) in list(self._holdings().items()):
            try:
                # The lock connection runs in autocommit (see _acquire): one statement, no
                # transaction around it.
                held = bool(connection.execute(_HOLDS_KEY, _key_parts(key)).scalar_one())
            except exc.SQLAlchemyError as error:
                raise LockLostError(
                    f"chat {chat_id}: the lock's database connection failed"
                ) from error
            if not held:
                raise LockLostError(f"chat {chat_id}: the lock is no longer held")

    def _holdings(self) -> dict[UUID, tuple[Connection, int]]:
        held: dict[UUID, tuple[Connection, int]] | None = getattr(self._held, "chats", None)
        if held is None:
            held = self._held.chats = {}
        return held

    def _acquire(self, chat_id: UUID, key: int, deadline: float) -> Connection:
        try:
            connection = self._engine.connect()
        except exc.TimeoutError as error:
            raise self._timeout(chat_id, "no free lock connection") from error
        except exc.SQLAlchemyError as error:
            raise database_error(error, self._engine, "chat lock") from error
        try:
            # One round trip, no transaction (autocommit): lock_timeout is set for the session,
            # which every hold on these connections sets afresh, then the session-level lock is
            # taken. lock_timeout 0 would mean "wait forever". The volatile set_config in a
            # subquery is evaluated (not flattened away) before the lock is asked for.
            wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            configured = sa.select(
                sa.func.set_config("lock_timeout", f"{wait_ms}ms", False).label("timeout")
            ).subquery("configured")
            connection.execute(
                sa.select(sa.func.pg_advisory_lock(key)).select_from(configured)
            ).all()
        except exc.SQLAlchemyError as error:
            connection.close()
            if getattr(getattr(error, "orig", None), "sqlstate", None) == _LOCK_NOT_AVAILABLE:
                raise self._timeout(chat_id, "held by another request") from error
            raise database_error(error, self._engine, "chat lock") from error
        except BaseException:
            connection.close()
            raise
        return connection

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
