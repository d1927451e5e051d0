"""The SandboxService servicer: parse, call the SandboxApi facade, convert to messages.

API keys are checked before any of this, in ``entrypoint.grpc.interceptor``; each method then
reads which tenant called (``_caller``) and passes it on, and the use cases enforce ownership.
A failed call aborts as entrypoint.grpc.failures says (status, error code, request id)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from grpc.aio import ServicerContext as Ctx

from domain.execution import OutputChunk, OutputStream
from domain.sandbox import SandboxSession, parse_chat_id
from domain.tenant import Caller
from entrypoint.application.files_api import FilesApi
from entrypoint.application.sandbox_api import SandboxApi
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.grpc.failures import TRANSPORT, CallGuard
from entrypoint.grpc.file_service import FileRpcs
from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from entrypoint.grpc.interceptor import caller_of
from entrypoint.grpc.messages import execute_response, sandbox_message
from entrypoint.metrics import ServiceMetrics
from usecase.ports import Logger

_STREAMS = {OutputStream.STDOUT: pb.OutputChunk.STDOUT, OutputStream.STDERR: pb.OutputChunk.STDERR}


class SandboxServicer(FileRpcs, pb_grpc.SandboxServiceServicer):
    def __init__(
        self,
        api: SandboxApi,
        metrics: ServiceMetrics,
        logger: Logger,
        authenticator: ApiKeyAuthenticator,
        files_api: FilesApi | None = None,
    ) -> None:
        self._api = api
        self._authenticator = authenticator
        self._files_api = files_api
        self._guard = CallGuard(metrics, logger)

    async def Execute(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            execution = await self._api.execute(
                parse_chat_id(request.chat_id),
                self._execution_request(request),
                TRANSPORT,
                packages=tuple(request.packages),
                caller=self._caller(context),
            )
            return execute_response(execution)

        return await self._guard.run(context, run)

    async def ExecuteStream(self, request: Any, context: Ctx) -> None:  # noqa: N802
        # Written with context.write (not yielded), so each write can be raced against the
        # stream's buffer: a client that stops reading is dropped instead of holding memory.
        async def run() -> None:
            stream = self._api.execute_stream(
                parse_chat_id(request.chat_id),
                self._execution_request(request),
                TRANSPORT,
                tuple(request.packages),
                self._caller(context),
            )
            try:
                async for event in stream:
                    if isinstance(event, OutputChunk) and event.stream is OutputStream.DISPLAY:
                        message = pb.ExecuteEvent(display=pb.RichOutput(**json.loads(event.data)))
                    elif isinstance(event, OutputChunk):
                        message = pb.ExecuteEvent(
                            output=pb.OutputChunk(stream=_STREAMS[event.stream], data=event.data)
                        )
                    else:
                        message = pb.ExecuteEvent(result=execute_response(event))
                    await stream.deliver(context.write(message))
            finally:
                await stream.aclose()

        await self._guard.run(context, run)

    async def EnsureSandbox(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            session = await self._api.ensure_sandbox(
                parse_chat_id(request.chat_id),
                tuple(request.packages),
                request.language or None,
                self._caller(context),
            )
            return sandbox_message(session)

        return await self._guard.run(context, run)

    async def GetSandbox(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        return await self._sandbox_call(request, context, self._api.get_sandbox)

    async def RenewSandbox(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        return await self._sandbox_call(request, context, self._api.renew_sandbox)

    async def DestroySandbox(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            session = await self._api.destroy_sandbox(
                parse_chat_id(request.chat_id), self._caller(context)
            )
            if session is None:
                return pb.DestroySandboxResponse(destroyed=False)
            return pb.DestroySandboxResponse(destroyed=True, sandbox=sandbox_message(session))

        return await self._guard.run(context, run)

    # -- helpers -------------------------------------------------------------------------------

    async def _sandbox_call(
        self,
        request: Any,
        context: Ctx,
        method: Callable[[UUID, Caller], Awaitable[SandboxSession]],
    ) -> Any:
        """A call on the request's chat that answers with its sandbox."""

        async def run() -> Any:
            session = await method(parse_chat_id(request.chat_id), self._caller(context))
            return sandbox_message(session)

        return await self._guard.run(context, run)

    def _caller(self, context: Ctx) -> Caller:
        return caller_of(self._authenticator, context)

    def _execution_request(self, request: Any) -> Any:
        timeout_s = request.timeout_s if request.HasField("timeout_s") else None
        return self._api.build_request(request.code, request.language or None, timeout_s)
