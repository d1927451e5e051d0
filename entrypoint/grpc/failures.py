"""How a gRPC call fails, for every servicer: the error table's row (entrypoint/errors.py) gives
the status and the code (``sandboxd-error-code`` trailing metadata), the call's request id goes
back in ``x-request-id`` (the caller's when it is plain, else a new one), and an unexpected error
is logged in full under that id while the caller sees a generic message."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from grpc.aio import ServicerContext as Ctx

from entrypoint.errors import error_row, is_generic, log_error_detail, public_message
from entrypoint.grpc.interceptor import ERROR_CODE_METADATA_KEY, metadata_value
from entrypoint.metrics import ServiceMetrics
from entrypoint.request_ids import request_id_or_new
from usecase.ports import Logger

T = TypeVar("T")

TRANSPORT = "grpc"
REQUEST_ID_METADATA_KEY = "x-request-id"


class CallGuard:
    """Runs a call's body and turns any exception into the call's abort."""

    def __init__(self, metrics: ServiceMetrics, logger: Logger) -> None:
        self._metrics = metrics
        self._logger = logger

    async def run(self, context: Ctx, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except Exception as exc:
            failure = exc
        # Outside the except block: abort raises, and must not be caught as a failure.
        await self.abort(context, failure)

    async def abort(self, context: Ctx, error: Exception) -> NoReturn:
        row = error_row(error)
        self._metrics.errors.labels(row.code, TRANSPORT).inc()
        request_id = request_id_or_new(
            metadata_value(context.invocation_metadata(), REQUEST_ID_METADATA_KEY)
        )
        if is_generic(error):
            log_error_detail(self._logger, "grpc_request_failed", error, request_id, TRANSPORT)
        await context.abort(
            row.grpc_status,
            public_message(error, request_id),
            trailing_metadata=(
                (ERROR_CODE_METADATA_KEY, row.code),
                (REQUEST_ID_METADATA_KEY, request_id),
            ),
        )
        raise AssertionError("context.abort returned")  # pragma: no cover
