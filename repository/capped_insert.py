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

The PostgreSQL text goes through psycopg's client-side binding (``ClientCursor``: the values
quoted by the driver, sent with the simple protocol, which allows several statements). It runs
on the caller's chat-lock connection when there is one (see ``SqlAlchemySandboxSessionRepository``).
"""

from __future__ import annotations

from collections.abc import Mapping
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


def node_cap_key(node: str) -> int:
    return advisory_key(b"node-cap:" + node.encode())


class CappedInsert:
    """The statement for one table, built and (for PostgreSQL) compiled once per combination of
    caps: only the parameters change from one new chat to the next."""

    def __init__(self, table: sa.Table, dialect: Dialect) -> None:
        self._table = table
        self._dialect = dialect
        self._statements: dict[tuple[bool, bool], sa.Insert] = {}
        self._postgresql: dict[tuple[bool, bool], SQLCompiler] = {}

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

    def postgresql(self, caps: SandboxCaps, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The node's lock (when capped) and the statement as one query for a ClientCursor, with
        the parameters as the types' bind processing gives them (UtcDateTime's checks)."""
        shape = (caps.on_node is not None, caps.per_owner is not None)
        compiled = self._postgresql.get(shape)
        if compiled is None:
            compiled = self.statement(caps).compile(dialect=self._dialect)
            assert isinstance(compiled, SQLCompiler)
            self._postgresql[shape] = compiled
        text = str(compiled)
        if not caps.unlimited:
            text = f"SELECT pg_advisory_xact_lock({node_cap_key(params['cap_node'])}); {text}"
        text = f"{ASYNC_COMMIT}; {text}"
        processors: Mapping[str, Any] = compiled._bind_processors
        bound = {
            name: processors[name](value) if name in processors else value
            for name, value in (compiled.construct_params(params) or {}).items()
        }
        return text, bound

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


def run_postgresql(connection: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> bool:
    """Run the query on an autocommit driver connection; True when the row was inserted."""
    with psycopg.ClientCursor(connection) as cursor:
        cursor.execute(query, params)
        while cursor.nextset():
            pass
        return cursor.rowcount == 1
