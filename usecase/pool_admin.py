"""ManagePools: the /v1/pools operations over the shared definitions and the local pools.

Definitions live in the PoolRepository (the database, shared by replicas); after each change
this replica's WarmPools follow at once, the others on their next health round (``sync``).
Status (total, allocated, available) is this replica's view of its own members. Without
WarmPools (the CLI, which runs no pools) only the definitions change and status reads zero.

Who may do what: pools change what the whole service runs (and how much of the host it holds),
so creating, resizing and deleting them is for admin callers only (SANDBOXD_ADMIN_KEYS, and the
operator: the CLI); any other key gets AdminRequiredError, checked before anything is looked up.
Reading definitions and counts is open to every key: they hold no tenant's data.

Sizes: a definition may ask for at most MAX_POOL_MEMBERS (1000) members (InvalidPoolError, 422),
and whatever it asks, the host's sandbox cap bounds what runs (usecase/pool_budget.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from domain.errors import AdminRequiredError, PoolAlreadyExistsError, PoolNotFoundError
from domain.pool import PoolCapacity, PoolDefinition, PoolStatus
from domain.tenant import OPERATOR, Caller
from usecase.pool import WarmPools
from usecase.ports import Logger, PoolRepository


@dataclass(frozen=True)
class PoolView:
    definition: PoolDefinition
    status: PoolStatus


class ManagePools:
    def __init__(self, repository: PoolRepository, pools: WarmPools | None, logger: Logger) -> None:
        self._repository = repository
        self._pools = pools
        self._logger = logger

    def sync(self) -> None:
        """Make this replica's running pools match the stored definitions."""
        if self._pools is not None:
            self._pools.apply(self._repository.list_pools())

    def ensure_default(self, definition: PoolDefinition) -> None:
        """Store the settings' default pool unless a pool of that name exists already."""
        try:
            self._repository.add_pool(definition)
        except PoolAlreadyExistsError:
            return
        self._logger.info("pool_created", {"pool": definition.name, "source": "settings"})

    def create(self, definition: PoolDefinition, caller: Caller = OPERATOR) -> PoolView:
        _require_admin(caller, "create pools")
        definition.capacity.check_requestable()
        self._repository.add_pool(replace(definition, revision=1))
        self._logger.info("pool_created", {"pool": definition.name, "by": caller.tenant})
        self.sync()
        return self.get(definition.name)

    def list(self) -> list[PoolView]:
        return [self._view(definition) for definition in self._repository.list_pools()]

    def get(self, name: str) -> PoolView:
        definition = self._repository.get_pool(name)
        if definition is None:
            raise PoolNotFoundError(f"no pool named {name!r}")
        return self._view(definition)

    def update(self, name: str, capacity: PoolCapacity, caller: Caller = OPERATOR) -> PoolView:
        _require_admin(caller, "change pools")
        capacity.check_requestable()
        current = self._repository.get_pool(name)
        if current is None:
            raise PoolNotFoundError(f"no pool named {name!r}")
        updated = replace(current, capacity=capacity, revision=current.revision + 1)
        self._repository.update_pool(updated)
        self._logger.info(
            "pool_updated", {"pool": name, "revision": updated.revision, "by": caller.tenant}
        )
        self.sync()
        return self._view(updated)

    def delete(self, name: str, caller: Caller = OPERATOR) -> None:
        _require_admin(caller, "delete pools")
        if not self._repository.delete_pool(name):
            raise PoolNotFoundError(f"no pool named {name!r}")
        self._logger.info("pool_deleted", {"pool": name, "by": caller.tenant})
        self.sync()

    def _view(self, definition: PoolDefinition) -> PoolView:
        pool = None if self._pools is None else self._pools.get(definition.name)
        status = (
            PoolStatus(total=0, allocated=0, available=0, revision=definition.revision)
            if pool is None
            else replace(pool.status(), revision=definition.revision)
        )
        return PoolView(definition, status)


def _require_admin(caller: Caller, action: str) -> None:
    if not caller.admin:
        raise AdminRequiredError(f"only admin keys may {action}")
