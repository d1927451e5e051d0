"""The PoolService servicer (/v1/pools over gRPC): the same ManagePools as HTTP, same errors
(changes need an admin key: PERMISSION_DENIED ``admin_required`` otherwise)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from grpc.aio import ServicerContext as Ctx

from domain.pool import PoolCapacity, PoolDefinition
from domain.tenant import Caller
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.grpc.failures import CallGuard
from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from entrypoint.grpc.interceptor import caller_of
from entrypoint.metrics import ServiceMetrics
from usecase.pool_admin import ManagePools, PoolView
from usecase.ports import Logger

T = TypeVar("T")


def pool_message(view: PoolView) -> Any:
    definition, status = view.definition, view.status
    capacity = definition.capacity
    return pb.Pool(
        name=definition.name,
        environment=pb.PoolEnvironment(
            language=definition.language, packages=list(definition.packages)
        ),
        capacity_spec=pb.CapacitySpec(
            buffer_max=capacity.buffer_max,
            buffer_min=capacity.buffer_min,
            pool_max=capacity.pool_max,
            pool_min=capacity.pool_min,
        ),
        status=pb.PoolStatus(
            total=status.total,
            allocated=status.allocated,
            available=status.available,
            revision=status.revision,
        ),
    )


def _capacity(message: Any) -> PoolCapacity:
    spec = message.capacity_spec
    return PoolCapacity(
        buffer_min=spec.buffer_min,
        buffer_max=spec.buffer_max,
        pool_min=spec.pool_min,
        pool_max=spec.pool_max,
    )


class PoolServicer(pb_grpc.PoolServiceServicer):
    def __init__(
        self,
        manage: Callable[[], ManagePools],
        metrics: ServiceMetrics,
        logger: Logger,
        authenticator: ApiKeyAuthenticator,
    ) -> None:
        self._manage = manage
        self._authenticator = authenticator
        self._guard = CallGuard(metrics, logger)

    async def ListPools(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        views = await self._call(context, lambda: self._manage().list())
        return pb.ListPoolsResponse(pools=[pool_message(view) for view in views])

    async def GetPool(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        return pool_message(await self._call(context, lambda: self._manage().get(request.name)))

    async def CreatePool(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        caller = self._caller(context)

        def create() -> PoolView:
            definition = PoolDefinition(
                name=request.name,
                language=request.environment.language or "python",
                packages=tuple(request.environment.packages),
                capacity=_capacity(request),
            )
            return self._manage().create(definition, caller)

        return pool_message(await self._call(context, create))

    async def UpdatePool(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        caller = self._caller(context)

        def update() -> PoolView:
            return self._manage().update(request.name, _capacity(request), caller)

        return pool_message(await self._call(context, update))

    async def DeletePool(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        caller = self._caller(context)
        await self._call(context, lambda: self._manage().delete(request.name, caller))
        return pb.DeletePoolResponse()

    def _caller(self, context: Ctx) -> Caller:
        return caller_of(self._authenticator, context)

    async def _call(self, context: Ctx, call: Callable[[], T]) -> T:
        """The blocking use case on a worker thread; its failure aborts the call."""
        return await self._guard.run(context, lambda: asyncio.to_thread(call))
