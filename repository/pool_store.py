"""Pool definitions: in memory (one process) and in PostgreSQL/SQLite (shared by replicas).

The table lives on the session store's ``metadata`` so the schema test compares it too; the
Alembic revision ``0003`` (0003_warm_pools.py) owns it. Packages are stored as a sorted JSON list.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Engine

from domain.errors import PoolAlreadyExistsError, PoolNotFoundError
from domain.pool import PoolCapacity, PoolDefinition
from repository.database import database_error, translated_errors
from repository.sqlalchemy_session import metadata

warm_pools = sa.Table(
    "warm_pools",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("language", sa.String(32), nullable=False),
    sa.Column("packages", sa.Text(), nullable=False),
    sa.Column("buffer_min", sa.Integer(), nullable=False),
    sa.Column("buffer_max", sa.Integer(), nullable=False),
    sa.Column("pool_min", sa.Integer(), nullable=False),
    sa.Column("pool_max", sa.Integer(), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),
)
_c = warm_pools.c


class InMemoryPoolRepository:
    def __init__(self) -> None:
        self._pools: dict[str, PoolDefinition] = {}
        self._lock = threading.Lock()

    def list_pools(self) -> list[PoolDefinition]:
        with self._lock:
            return [self._pools[name] for name in sorted(self._pools)]

    def get_pool(self, name: str) -> PoolDefinition | None:
        with self._lock:
            return self._pools.get(name)

    def add_pool(self, definition: PoolDefinition) -> None:
        with self._lock:
            if definition.name in self._pools:
                raise PoolAlreadyExistsError(f"pool {definition.name!r} exists already")
            self._pools[definition.name] = definition

    def update_pool(self, definition: PoolDefinition) -> None:
        with self._lock:
            if definition.name not in self._pools:
                raise PoolNotFoundError(f"no pool named {definition.name!r}")
            self._pools[definition.name] = definition

    def delete_pool(self, name: str) -> bool:
        with self._lock:
            return self._pools.pop(name, None) is not None


def _values(definition: PoolDefinition) -> dict[str, Any]:
    capacity = definition.capacity
    return {
        "name": definition.name,
        "language": definition.language,
        "packages": json.dumps(sorted(definition.packages)),
        "buffer_min": capacity.buffer_min,
        "buffer_max": capacity.buffer_max,
        "pool_min": capacity.pool_min,
        "pool_max": capacity.pool_max,
        "revision": definition.revision,
    }


def _definition(row: sa.Row[Any]) -> PoolDefinition:
    return PoolDefinition(
        name=row.name,
        language=row.language,
        packages=tuple(json.loads(row.packages)),
        capacity=PoolCapacity(
            buffer_min=row.buffer_min,
            buffer_max=row.buffer_max,
            pool_min=row.pool_min,
            pool_max=row.pool_max,
        ),
        revision=row.revision,
    )


class SqlAlchemyPoolRepository:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def list_pools(self) -> list[PoolDefinition]:
        with translated_errors(self._engine, "list_pools"), self._engine.begin() as connection:
            rows = connection.execute(sa.select(warm_pools).order_by(_c.name)).all()
        return [_definition(row) for row in rows]

    def get_pool(self, name: str) -> PoolDefinition | None:
        with translated_errors(self._engine, "get_pool"), self._engine.begin() as connection:
            row = connection.execute(sa.select(warm_pools).where(_c.name == name)).first()
        return None if row is None else _definition(row)

    def add_pool(self, definition: PoolDefinition) -> None:
        try:
            with self._engine.begin() as connection:
                connection.execute(sa.insert(warm_pools).values(_values(definition)))
        except exc.IntegrityError as error:
            raise PoolAlreadyExistsError(f"pool {definition.name!r} exists already") from error
        except exc.SQLAlchemyError as error:
            raise database_error(error, self._engine, "add_pool") from error

    def update_pool(self, definition: PoolDefinition) -> None:
        with translated_errors(self._engine, "update_pool"), self._engine.begin() as connection:
            result = connection.execute(
                sa.update(warm_pools).where(_c.name == definition.name).values(_values(definition))
            )
        if result.rowcount == 0:
            raise PoolNotFoundError(f"no pool named {definition.name!r}")

    def delete_pool(self, name: str) -> bool:
        with translated_errors(self._engine, "delete_pool"), self._engine.begin() as connection:
            result = connection.execute(sa.delete(warm_pools).where(_c.name == name))
        return bool(result.rowcount)
