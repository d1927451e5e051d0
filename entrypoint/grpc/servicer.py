"""The SandboxService servicer: parse, call the SandboxApi facade, convert to messages.

API keys are checked before any of this, in ``entrypoint.grpc.interceptor``; each method then
reads which tenant called (``_caller``) and passes it on, and the use cases enforce ownership.
Every call has a request id (the caller's ``x-request-id`` metadata when it is plain, else a new
one); a failed call returns it in its trailing metadata, and the log holds the detail under it."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from grpc.aio import ServicerContext as Ctx

from domain.execution import ExecutionResult, OutputChunk, OutputStream
from domain.sandbox import SandboxSession, parse_chat_id
from domain.tenant import Caller
from entrypoint.application.files_api import FilesApi
from entrypoint.application.sandbox_api import SandboxApi
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.errors import error_row, is_generic, log_error_detail, public_message
from entrypoint.grpc.file_service import FileRpcs
from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from entrypoint.grpc.interceptor import ERROR_CODE_METADATA_KEY, metadata_value
from entrypoint.metrics import ServiceMetrics
from entrypoint.request_ids import request_id_or_new
from entrypoint.wire import clamp_exit_code
from usecase.execute import CodeExecution
from usecase.ports import Logger

T = TypeVar("T")

TRANSPORT = "grpc"
REQUEST_ID_METADATA_KEY = "x-request-id"

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
        self._metrics = metrics
        self._logger = logger

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

        return await self._guard(context, run)

    async def ExecuteStream(self, request: Any, context: Ctx) -> None:  # noqa: N802
        # Written with context.write (not yielded), so each write can be raced against the
        # stream's buffer: a client that stops reading is dropped instead of holding memory.
        failure: Exception | None = None
        try:
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
        except Exception as exc:
            failure = exc
        if failure is not None:
            await self._abort(context, failure)

    async def EnsureSandbox(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            session = await self._api.ensure_sandbox(
                parse_chat_id(request.chat_id),
                tuple(request.packages),
                request.language or None,
                self._caller(context),
            )
            return sandbox_message(session)

        return await self._guard(context, run)

    async def GetSandbox(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            session = await self._api.get_sandbox(
                parse_chat_id(request.chat_id), self._caller(context)
            )
            return sandbox_message(session)

        return await self._guard(context, run)

    async def RenewSandbox(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            session = await self._api.renew_sandbox(
                parse_chat_id(request.chat_id), self._caller(context)
            )
            return sandbox_message(session)

        return await self._guard(context, run)

    async def DestroySandbox(self, request: Any, context: Ctx) -> Any:  # noqa: N802
        async def run() -> Any:
            session = await self._api.destroy_sandbox(
                parse_chat_id(request.chat_id), self._caller(context)
            )
            if session is None:
                return pb.DestroySandboxResponse(destroyed=False)
            return pb.DestroySandboxResponse(destroyed=True, sandbox=sandbox_message(session))

        return await self._guard(context, run)

    # -- helpers -------------------------------------------------------------------------------

    def _caller(self, context: Ctx) -> Caller:
        # The interceptor already refused unknown keys; this says which known one called.
        return self._authenticator.authenticate(
            metadata_value(context.invocation_metadata(), "authorization")
        )

    def _execution_request(self, request: Any) -> Any:
        timeout_s = request.timeout_s if request.HasField("timeout_s") else None
        return self._api.build_request(request.code, request.language or None, timeout_s)

    async def _guard(self, context: Ctx, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except Exception as exc:
            failure = exc
        # Outside the except block: abort raises, and must not be caught as a failure.
        await self._abort(context, failure)

    async def _abort(self, context: Ctx, error: Exception) -> NoReturn:
        row = error_row(error)
        code, status = row.code, row.grpc_status
        self._metrics.errors.labels(code, TRANSPORT).inc()
        request_id = _request_id(context)
        if is_generic(error):
            log_error_detail(self._logger, "grpc_request_failed", error, request_id, TRANSPORT)
        await context.abort(
            status,
            public_message(error, request_id),
            trailing_metadata=(
                (ERROR_CODE_METADATA_KEY, code),
                (REQUEST_ID_METADATA_KEY, request_id),
            ),
        )
        raise AssertionError("context.abort returned")  # pragma: no cover


def _request_id(context: Ctx) -> str:
    return request_id_or_new(metadata_value(context.invocation_metadata(), REQUEST_ID_METADATA_KEY))


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def sandbox_message(session: SandboxSession) -> Any:
    return pb.Sandbox(
        chat_id=str(session.chat_id),
        session_id=str(session.session_id),
        container_id=session.container_id,
        status=session.status.value,
        runtime_kind=session.runtime_kind,
        created_at=_timestamp(session.created_at),
        expires_at=_timestamp(session.expires_at),
        last_activity_at=_timestamp(session.last_activity_at),
        max_expires_at=_timestamp(session.max_expires_at),
        packages=list(session.packages),
    )


def result_message(result: ExecutionResult) -> Any:
    return pb.ExecutionResult(
        stdout=result.stdout,
        stderr=result.stderr,
        exit_code=clamp_exit_code(result.exit_code),
        duration_s=result.duration_s,
        timed_out=result.timed_out,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        sandbox_replaced=result.sandbox_replaced,
        state_lost=result.state_lost,
        outputs=[
            pb.RichOutput(mime_type=o.mime_type, data=o.data, encoding=o.encoding)
            for o in result.outputs
        ],
        outputs_truncated=result.outputs_truncated,
        changed_files=[pb.ChangedFile(path=f.path, size=f.size) for f in result.changed_files],
        changed_files_truncated=result.changed_files_truncated,
    )


def execute_response(execution: CodeExecution) -> Any:
    return pb.ExecuteResponse(
        result=result_message(execution.result), sandbox=sandbox_message(execution.session)
    )
