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

The PostgreSQL text goes through psycopg's client-side binding (``ClientCursor``: the values
quoted by the driver, sent with the simple protocol, which allows several statements). It runs
on the caller's chat-lock connection when there is one (see ``SqlAlchemySandboxSessionRepository``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from domain.sandbox import SandboxCaps, SandboxSession, SandboxStatus
from repository.database import advisory_key


def node_cap_key(node: str) -> int:
    return advisory_key(b"node-cap:" + node.encode())


def insert_within(
    table: sa.Table, values: dict[str, Any], session: SandboxSession, caps: SandboxCaps
) -> sa.Insert:
    """``INSERT INTO table SELECT <values> WHERE <each cap has room>`` (0 or 1 row)."""
    columns = table.c
    running_here = (
        sa.select(sa.func.count())
        .select_from(table)
        .where(
            sa.text("status IN ('running', 'dead')"),
            columns.status == SandboxStatus.RUNNING.value,
            columns.node == session.node,
        )
    )
    room = []
    if caps.on_node is not None:
        room.append(running_here.scalar_subquery() < caps.on_node)
    if caps.per_owner is not None:
        room.append(
            running_here.where(columns.owner == session.owner).scalar_subquery() < caps.per_owner
        )
    # Typed literals: PostgreSQL's dialect renders each with a cast to its column's type (in
    # INSERT ... SELECT a NULL or a quoted value would otherwise be text); SQLite needs none.
    source = sa.select(*(sa.literal(values[c.name], c.type).label(c.name) for c in table.c)).where(
        *room
    )
    return table.insert().from_select([c.name for c in table.c], source)


def postgresql_text(
    statement: sa.Insert, dialect: Dialect, node: str, caps: SandboxCaps
) -> tuple[str, dict[str, Any]]:
    """The node's lock (when capped) and the statement as one query for a ClientCursor, with
    its parameters (as the types' bind processing would give them: psycopg adapts them so)."""
    compiled = statement.compile(dialect=dialect)
    # The types' own conversion (UtcDateTime's), as SQLAlchemy would apply it on execute.
    processors: Mapping[str, Callable[[Any], Any]] = compiled._bind_processors  # type: ignore[assignment]
    params = {
        name: processors[name](value) if name in processors else value
        for name, value in compiled.params.items()
    }
    if caps.unlimited:
        return str(compiled), params
    return f"SELECT pg_advisory_xact_lock({node_cap_key(node)}); {compiled}", params


def run_postgresql(connection: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> bool:
    """Run the query on an autocommit driver connection; True when the row was inserted."""
    with psycopg.ClientCursor(connection) as cursor:
        cursor.execute(query, params)
        while cursor.nextset():
            pass
        return cursor.rowcount == 1
