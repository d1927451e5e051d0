"""ManagePools: only admin callers change pools; anyone authenticated may read them."""

from __future__ import annotations

import pytest

from domain.errors import AdminRequiredError, InvalidPoolError
from domain.pool import PoolCapacity, PoolDefinition
from domain.tenant import OPERATOR, Caller
from repository.pool_store import InMemoryPoolRepository
from testkit.world import World
from usecase.pool import WarmPools
from usecase.pool_admin import ManagePools

TENANT = Caller("alice")
ADMIN = Caller("ops", admin=True)


def definition(name: str = "base") -> PoolDefinition:
    return PoolDefinition(name, "python", (), PoolCapacity.fixed(1))


@pytest.fixture
def manage(world: World) -> ManagePools:
    pools = WarmPools(world.runtime, world.repository, world.clock, world.logger)
    return ManagePools(InMemoryPoolRepository(), pools, world.logger)


def test_a_tenant_key_cannot_create_a_pool(manage: ManagePools, world: World) -> None:
    with pytest.raises(AdminRequiredError):
        manage.create(definition(), TENANT)
    assert manage.list() == []
    assert world.runtime.create_calls == []  # nothing was started for the refused pool


def test_a_tenant_key_cannot_resize_or_delete_an_admins_pool(
    manage: ManagePools, world: World
) -> None:
    manage.create(definition(), ADMIN)
    with pytest.raises(AdminRequiredError):
        manage.update("base", PoolCapacity.fixed(50), TENANT)
    with pytest.raises(AdminRequiredError):
        manage.delete("base", TENANT)
    # Refused before anything is looked up: an unknown name is refused the same way.
    with pytest.raises(AdminRequiredError):
        manage.delete("nope", TENANT)
    (view,) = manage.list()
    assert view.definition.capacity == PoolCapacity.fixed(1)
    assert view.status.revision == 1
    assert manage.get("base").definition.name == "base"
    manage.delete("base", ADMIN)


def test_the_operator_and_admin_keys_manage_pools(manage: ManagePools) -> None:
    manage.create(definition("one"), OPERATOR)
    manage.create(definition("two"), ADMIN)
    manage.update("one", PoolCapacity.fixed(2), ADMIN)
    manage.delete("two", OPERATOR)
    assert [view.definition.name for view in manage.list()] == ["one"]
    manage.delete("one")  # the operator (CLI, scripts) is the default caller


@pytest.mark.parametrize(
    "capacity",
    [
        PoolCapacity(buffer_min=100_000, buffer_max=100_000, pool_min=0, pool_max=100_000),
        PoolCapacity(buffer_min=0, buffer_max=1001, pool_min=0, pool_max=2000),
        PoolCapacity(buffer_min=0, buffer_max=1, pool_min=1001, pool_max=2000),
    ],
)
def test_absurd_sizes_are_refused_on_every_transport(
    manage: ManagePools, world: World, capacity: PoolCapacity
) -> None:
    # HTTP, gRPC and the CLI all go through ManagePools.
    with pytest.raises(InvalidPoolError, match="must not exceed 1000"):
        manage.create(PoolDefinition("big", "python", (), capacity), ADMIN)
    manage.create(definition(), ADMIN)
    with pytest.raises(InvalidPoolError, match="must not exceed 1000"):
        manage.update("base", capacity, ADMIN)
    assert [view.definition.name for view in manage.list()] == ["base"]
    assert manage.get("base").definition.capacity == PoolCapacity.fixed(1)


def test_the_largest_allowed_size_is_accepted(world: World) -> None:
    manage = ManagePools(InMemoryPoolRepository(), None, world.logger)  # the CLI: runs no pools
    capacity = PoolCapacity(buffer_min=0, buffer_max=1000, pool_min=1000, pool_max=100_000)
    manage.create(PoolDefinition("big", "python", (), capacity), ADMIN)
    assert manage.get("big").definition.capacity == capacity
