"""PoolRepository contract over in-memory, SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from domain.errors import PoolAlreadyExistsError, PoolNotFoundError
from domain.pool import PoolCapacity, PoolDefinition
from repository.pool_store import InMemoryPoolRepository, SqlAlchemyPoolRepository, warm_pools


@pytest.fixture
def pools(store_kind: str, request: pytest.FixtureRequest):
    if store_kind == "memory":
        return InMemoryPoolRepository()
    engine: Engine = request.getfixturevalue(f"{store_kind}_engine")
    with engine.begin() as connection:
        connection.execute(sa.delete(warm_pools))
    return SqlAlchemyPoolRepository(engine)


def pool(name: str = "base", size: int = 2, revision: int = 1) -> PoolDefinition:
    return PoolDefinition(
        name, "python", ("pandas", "numpy"), PoolCapacity(1, size, 0, 10), revision
    )


def test_add_get_list_update_delete(pools) -> None:
    assert pools.list_pools() == []
    assert pools.get_pool("base") is None
    pools.add_pool(pool("base"))
    pools.add_pool(pool("another"))
    got = pools.get_pool("base")
    assert got is not None and got.capacity == PoolCapacity(1, 2, 0, 10)
    assert sorted(got.packages) == ["numpy", "pandas"]
    assert [p.name for p in pools.list_pools()] == ["another", "base"]
    pools.update_pool(pool("base", size=5, revision=2))
    updated = pools.get_pool("base")
    assert updated is not None and updated.capacity.buffer_max == 5 and updated.revision == 2
    assert pools.delete_pool("base") is True
    assert pools.delete_pool("base") is False
    assert pools.get_pool("base") is None


def test_a_taken_name_and_an_unknown_pool_are_errors(pools) -> None:
    pools.add_pool(pool("base"))
    with pytest.raises(PoolAlreadyExistsError):
        pools.add_pool(pool("base", size=3))
    with pytest.raises(PoolNotFoundError):
        pools.update_pool(pool("missing"))
