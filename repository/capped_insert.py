"""A new chat's record, inserted only while its node and owner are within their sandbox caps.

One statement counts and inserts (``INSERT ... SELECT ... WHERE count < cap``), so a new chat
costs one write whatever the caps. On its own that statement does not stop two creates racing
on two connections: each counts from a snapshot without the other's row. So:

- PostgreSQL: the statement is preceded, in the same simple-protocol query (one round trip, one
  implicit transaction), by ``pg_advisory_xact_lock`` on the node's key. Creates on one node
  queue on that lock, which is released at commit; the insert's own snapshot is taken after the
  lock is granted (each statement of a READ COMMITTED transaction has its own), so it counts
  every record the previous holder committed. Only inserts of new chats take it; nothing else
  that adds RUNNING records on a node exists (a replacement stops the old sandbox first, and
  its record is gone before the new one is inserted).
- SQLite: a writing statement takes the database's write lock before it reads, so the count and
  the insert are one step against every other writer.

PostgreSQL commits this insert without waiting for its WAL to reach the disk
(``synchronous_commit = off`` for its own transaction only). The flush after an idle moment is
the slowest part of a new chat's first result on a virtual disk (1.2-1.7 ms measured, against
0.4 ms for the whole round trip without it), and what it protects is little: the commit is
visible at once to every replica, survives this service's crash (the server flushes it within
3 x wal_writer_delay, 0.6 s by default), and is lost only if the database server or its host
crashes within that window. Then the new sandbox (a new chat's, or a replacement's) has no
record: reconciliation removes it as an orphan, and the chat's next message starts a new one, as
for a chat that never ran code. That is the durability the SQLite store gives every commit (WAL
with synchronous=NORMAL). Every other write (renewals, other updates, deletes) still waits for
its flush.

PostgreSQL runs the INSERT as a statement prepared once per connection (``PREPARE``, then
``EXECUTE`` in the query above) with a generic plan (``SET LOCAL plan_cache_mode``): planning the
INSERT ... SELECT with its cap counts took 0.39 ms of the server's time per new chat, against 0.12
ms to run it (EXPLAIN ANALYZE); prepared, the round trip was 0.35-0.45 ms shorter. Which
connections have it is kept here, per driver connection (a reconnect is a new one); should the
server have lost it all the same (a DISCARD on that session), the insert is prepared again and
retried once: the failed EXECUTE changed nothing.

The PostgreSQL text goes through psycopg's client-side binding (``ClientCursor``: the values
quoted by the driver, sent with the simple protocol, which allows several statements). It runs
on the caller's chat-lock connection when there is one (see ``SqlAlchemySandboxSessionRepository``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from domain.sandbox import SandboxCaps, SandboxSession, SandboxStatus
from repository.database import advisory_key

# For this one transaction (SET LOCAL; the pooled connection keeps the server's setting): the
# commit returns without waiting for its WAL flush (see the module's doc).
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"
# The prepared INSERT's plan is built once, not per new chat, from its first EXECUTE on.
GENERIC_PLAN = "SET LOCAL plan_cache_mode = force_generic_plan"
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class _Prepared:
    """The INSERT as a prepared statement: one per shape of caps, the same on every connection."""

    name: str  # derived from its text
    prepare_sql: str  # PREPARE name AS INSERT ... ($1, $2, ...)
    execute_sql: str  # EXECUTE name(%(param)s, ...)


@dataclass(frozen=True)
class PostgresInsert:
    """One new record's query for a ClientCursor, and the statement it executes."""

    statement: _Prepared
    query: str  # SET LOCAL ...; [the node's lock;] EXECUTE name(%(param)s, ...)
    params: dict[str, Any]


def _prepared_form(insert_sql: str) -> _Prepared:
    """The compiled INSERT (pyformat placeholders, each with its cast) as a PREPARE text with
    numbered parameters, and the EXECUTE that passes them by name; a name used twice is one
    parameter."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    statement = _PLACEHOLDER.sub(number, insert_sql)
    name = "sandboxd_new_record_" + hashlib.blake2b(statement.encode(), digest_size=6).hexdigest()
    arguments = ", ".join(f"%({n})s" for n in names)
    return _Prepared(name, f"PREPARE {name} AS {statement}", f"EXECUTE {name}({arguments})")


def node_cap_key(node: str) -> int:
    return advisory_key(b"node-cap:" + node.encode())


class CappedInsert:
    """The statement for one table, built and (for PostgreSQL) compiled once per combination of
    caps: only the parameters change from one new chat to the next."""

    def __init__(self, table: sa.Table, dialect: Dialect) -> None:
        self._table = table
        self._dialect = dialect
        self._statements: dict[tuple[bool, bool], sa.Insert] = {}
        self._postgresql: dict[tuple[bool, bool], tuple[SQLCompiler, _Prepared]] = {}

    def statement(self, caps: SandboxCaps) -> sa.Insert:
        """``INSERT INTO table SELECT :values WHERE <each cap has room>`` (0 or 1 row)."""
        shape = (caps.on_node is not None, caps.per_owner is not None)
        statement = self._statements.get(shape)
        if statement is None:
            statement = self._statements[shape] = self._build(*shape)
        return statement

    def params(
        self, values: dict[str, Any], session: SandboxSession, caps: SandboxCaps
    ) -> dict[str, Any]:
        return {
            **{f"v_{name}": value for name, value in values.items()},
            "cap_node": session.node,
            "cap_owner": session.owner,
            "cap_on_node": caps.on_node,
            "cap_per_owner": caps.per_owner,
        }

    def postgresql(self, caps: SandboxCaps, params: dict[str, Any]) -> PostgresInsert:
        """The node's lock (when capped) and the prepared statement's EXECUTE as one query for a
        ClientCursor, with the parameters as the types' bind processing gives them (UtcDateTime's
        checks)."""
        shape = (caps.on_node is not None, caps.per_owner is not None)
        cached = self._postgresql.get(shape)
        if cached is None:
            compiled = self.statement(caps).compile(dialect=self._dialect)
            assert isinstance(compiled, SQLCompiler)
            cached = self._postgresql[shape] = (compiled, _prepared_form(str(compiled)))
        compiled, prepared = cached
        text = prepared.execute_sql
        if not caps.unlimited:
            text = f"SELECT pg_advisory_xact_lock({node_cap_key(params['cap_node'])}); {text}"
        processors: Mapping[str, Any] = compiled._bind_processors
        bound = {
            name: processors[name](value) if name in processors else value
            for name, value in (compiled.construct_params(params) or {}).items()
        }
        return PostgresInsert(prepared, f"{ASYNC_COMMIT}; {GENERIC_PLAN}; {text}", bound)

    def _build(self, node_capped: bool, owner_capped: bool) -> sa.Insert:
        columns = self._table.c
        running_here = (
            sa.select(sa.func.count())
            .select_from(self._table)
            .where(
                sa.text("status IN ('running', 'dead')"),
                columns.status == SandboxStatus.RUNNING.value,
                columns.node == sa.bindparam("cap_node", type_=columns.node.type),
            )
        )
        room = []
        if node_capped:
            room.append(
                running_here.scalar_subquery() < sa.bindparam("cap_on_node", type_=sa.Integer)
            )
        if owner_capped:
            owner = columns.owner == sa.bindparam("cap_owner", type_=columns.owner.type)
            room.append(
                running_here.where(owner).scalar_subquery()
                < sa.bindparam("cap_per_owner", type_=sa.Integer)
            )
        # Typed parameters: PostgreSQL's dialect renders each with a cast to its column's type
        # (in INSERT ... SELECT a NULL or a quoted value would otherwise be text).
        source = sa.select(
            *(sa.bindparam(f"v_{c.name}", type_=c.type).label(c.name) for c in self._table.c)
        ).where(*room)
        return self._table.insert().from_select([c.name for c in self._table.c], source)


# Which prepared statements each driver connection has (weak: a closed one drops out).
_PREPARED: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[str]] = (
    weakref.WeakKeyDictionary()
)
_PREPARED_LOCK = threading.Lock()


def run_postgresql(connection: psycopg.Connection[Any], insert: PostgresInsert) -> bool:
    """Run the insert on an autocommit driver connection (preparing its statement there first,
    once); True when the row was inserted."""
    with _PREPARED_LOCK:
        ready = insert.statement.name in _PREPARED.get(connection, ())
    if not ready:
        _prepare(connection, insert)
    try:
        return _execute(connection, insert)
    except psycopg.errors.InvalidSqlStatementName:
        # The session lost it (DISCARD, DEALLOCATE): nothing ran; prepare it again, once.
        _prepare(connection, insert)
        return _execute(connection, insert)


def _prepare(connection: psycopg.Connection[Any], insert: PostgresInsert) -> None:
    # Already there: the session has it (same name, so same text) though it was not noted.
    with contextlib.suppress(psycopg.errors.DuplicatePreparedStatement):
        connection.execute(insert.statement.prepare_sql, prepare=False)
    with _PREPARED_LOCK:
        _PREPARED.setdefault(connection, set()).add(insert.statement.name)


def _execute(connection: psycopg.Connection[Any], insert: PostgresInsert) -> bool:
    with psycopg.ClientCursor(connection) as cursor:
        cursor.execute(insert.query, insert.params)
        while cursor.nextset():
            pass
        return cursor.rowcount == 1
