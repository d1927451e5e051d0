"""API keys for every gRPC method, checked in one server interceptor before the request message
is deserialised or any servicer code runs (a new method cannot forget it).

grpc.aio runs the interceptor and then the method in one task, so the caller the interceptor
found is handed to the servicer in a context variable, with the header it came from: the key is
checked once per call. The servicer takes it only for that very header, so even a context that
some other call had set could not lend it another key's identity."""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc.aio import ServicerContext

from domain.tenant import Caller
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.errors import UnauthenticatedError
from entrypoint.metrics import ServiceMetrics

ERROR_CODE_METADATA_KEY = "sandboxd-error-code"
_CODE = "unauthenticated"
# (authorization header, its caller), set by the interceptor for the call it let through.
_CALLER: contextvars.ContextVar[tuple[str | None, Caller] | None] = contextvars.ContextVar(
    "sandboxd_grpc_caller", default=None
)


def metadata_value(metadata: Any, name: str) -> str | None:
    for key, value in metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def caller_of(authenticator: ApiKeyAuthenticator, context: ServicerContext[Any, Any]) -> Caller:
    """Which known key called (the interceptor already refused unknown ones, and said who)."""
    authorization = metadata_value(context.invocation_metadata(), "authorization")
    checked = _CALLER.get()
    if checked is not None and checked[0] == authorization:
        return checked[1]
    return authenticator.authenticate(authorization)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, authenticator: ApiKeyAuthenticator, metrics: ServiceMetrics) -> None:
        self._authenticator = authenticator
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        authorization = metadata_value(handler_call_details.invocation_metadata, "authorization")
        try:
            _CALLER.set((authorization, self._authenticator.authenticate(authorization)))
        except UnauthenticatedError as error:
            self._metrics.errors.labels(_CODE, "grpc").inc()
            handler = await continuation(handler_call_details)
            return _refusal(handler, str(error))
        return await continuation(handler_call_details)


def _refusal(handler: grpc.RpcMethodHandler | None, message: str) -> Any:
    """A handler of the same kind that aborts; no deserialiser, so the request stays bytes."""

    async def abort(context: ServicerContext[Any, Any]) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            message,
            trailing_metadata=((ERROR_CODE_METADATA_KEY, _CODE),),
        )

    async def unary(request: bytes, context: ServicerContext[Any, Any]) -> None:
        await abort(context)

    async def stream(request: bytes, context: ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await abort(context)
        yield  # pragma: no cover - makes this an async generator

    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)
