"""/v1/pools in OpenSandbox's shape: pool definitions (capacitySpec) and their status.

Every key may read; POST, PUT and DELETE need an admin key (ManagePools enforces it: 403
``admin_required`` otherwise)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from domain.pool import MAX_POOL_MEMBERS, PoolCapacity, PoolDefinition
from domain.tenant import Caller
from entrypoint.http.routes import _ERRORS
from entrypoint.http.schemas import ErrorBody
from usecase.pool_admin import ManagePools, PoolView

# poolMax is a ceiling: far above any host's capacity, and within every store's integer column
# (larger was a 500). The counts that start members are bounded by MAX_POOL_MEMBERS (1000).
MAX_POOL_COUNT = 100_000


class CapacitySpec(BaseModel):
    # Strict: a JSON true is not a count, nor is "3".
    model_config = ConfigDict(extra="forbid", strict=True)

    bufferMax: int = Field(ge=0, le=MAX_POOL_MEMBERS)  # noqa: N815 (the API's field names)
    bufferMin: int = Field(ge=0, le=MAX_POOL_MEMBERS)  # noqa: N815
    poolMax: int = Field(ge=0, le=MAX_POOL_COUNT)  # noqa: N815
    poolMin: int = Field(ge=0, le=MAX_POOL_MEMBERS)  # noqa: N815

    def capacity(self) -> PoolCapacity:
        return PoolCapacity(
            buffer_min=self.bufferMin,
            buffer_max=self.bufferMax,
            pool_min=self.poolMin,
            pool_max=self.poolMax,
        )


class PoolEnvironment(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    language: str = Field(default="python", min_length=1, max_length=32)
    packages: list[str] = Field(default_factory=list)


class PoolBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    environment: PoolEnvironment = Field(default_factory=PoolEnvironment)
    capacitySpec: CapacitySpec  # noqa: N815


class CapacityBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    capacitySpec: CapacitySpec  # noqa: N815


class CapacityView(BaseModel):
    """A pool's capacity as stored: a pool defined by settings may be unbounded (2**31 - 1)."""

    bufferMax: int  # noqa: N815 (the API's field names)
    bufferMin: int  # noqa: N815
    poolMax: int  # noqa: N815
    poolMin: int  # noqa: N815


class PoolStatusView(BaseModel):
    total: int
    allocated: int
    available: int
    revision: int


class PoolViewModel(BaseModel):
    name: str
    environment: PoolEnvironment
    capacitySpec: CapacityView  # noqa: N815
    status: PoolStatusView


class PoolList(BaseModel):
    items: list[PoolViewModel]


def pool_json(view: PoolView) -> dict[str, object]:
    definition = view.definition
    capacity = definition.capacity
    return {
        "name": definition.name,
        "environment": {"language": definition.language, "packages": list(definition.packages)},
        "capacitySpec": {
            "bufferMax": capacity.buffer_max,
            "bufferMin": capacity.buffer_min,
            "poolMax": capacity.pool_max,
            "poolMin": capacity.pool_min,
        },
        "status": {
            "total": view.status.total,
            "allocated": view.status.allocated,
            "available": view.status.available,
            "revision": view.status.revision,
        },
    }


def pools_router(require_api_key: Callable[..., Awaitable[Caller]]) -> APIRouter:
    router = APIRouter(
        prefix="/v1/pools",
        dependencies=[Depends(require_api_key)],
        tags=["pools"],
        responses={
            **_ERRORS,
            403: {"model": ErrorBody, "description": "Not an admin key (code: admin_required)."},
            404: {"model": ErrorBody, "description": "No such pool (code: pool_not_found)."},
            409: {"model": ErrorBody, "description": "The name is taken (pool_already_exists)."},
        },
    )
    # A default, not an Annotated alias: annotations are strings here (future import).
    caller_dep = Depends(require_api_key)

    def manage(request: Request) -> ManagePools:
        factory: Callable[[], ManagePools] = request.app.state.pools
        return factory()

    @router.post("", status_code=201, response_model=PoolViewModel, summary="Create a pool")
    async def create_pool(
        body: PoolBody, request: Request, caller: Caller = caller_dep
    ) -> dict[str, object]:
        definition = PoolDefinition(
            name=body.name,
            language=body.environment.language,
            packages=tuple(body.environment.packages),
            capacity=body.capacitySpec.capacity(),
        )
        return pool_json(await asyncio.to_thread(manage(request).create, definition, caller))

    @router.get("", response_model=PoolList, summary="List pools")
    async def list_pools(request: Request) -> dict[str, object]:
        views = await asyncio.to_thread(manage(request).list)
        return {"items": [pool_json(view) for view in views]}

    @router.get("/{name}", response_model=PoolViewModel, summary="A pool and its status")
    async def get_pool(name: str, request: Request) -> dict[str, object]:
        return pool_json(await asyncio.to_thread(manage(request).get, name))

    @router.put("/{name}", response_model=PoolViewModel, summary="Change a pool's capacity")
    async def update_pool(
        name: str, body: CapacityBody, request: Request, caller: Caller = caller_dep
    ) -> dict[str, object]:
        capacity = body.capacitySpec.capacity()
        return pool_json(await asyncio.to_thread(manage(request).update, name, capacity, caller))

    @router.delete("/{name}", status_code=204, summary="Delete a pool (idle members destroyed)")
    async def delete_pool(name: str, request: Request, caller: Caller = caller_dep) -> Response:
        await asyncio.to_thread(manage(request).delete, name, caller)
        return Response(status_code=204)

    return router
