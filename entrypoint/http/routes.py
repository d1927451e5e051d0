"""HTTP routes. Handlers parse, call the SandboxApi facade, and shape JSON; errors go to the
error table in ``entrypoint.http.errors``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import Receive, Scope, Send

from domain.errors import InvalidInputError
from domain.execution import OutputChunk, OutputStream
from domain.sandbox import SandboxStatus, parse_chat_id
from domain.tenant import Caller
from entrypoint.application.sandbox_api import SandboxApi
from entrypoint.application.streaming import ExecutionStream, StreamEvent
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.errors import (
    SlowClientError,
    error_code,
    is_generic,
    log_error_detail,
    public_message,
)
from entrypoint.http.errors import request_id_of
from entrypoint.http.schemas import (
    ChatIdPath,
    EnsureBody,
    ErrorBody,
    ExecuteBody,
    ExecutionView,
    SandboxPage,
    SandboxView,
    execution_json,
    sandbox_json,
)
from entrypoint.metrics import METRICS_CONTENT_TYPE, ServiceMetrics
from usecase.ports import Logger

TRANSPORT = "http"
MAX_OFFSET = 2**62
EVENT_STREAM = "text/event-stream"
# How long a streamed execution may take before the response headers go out. Errors found
# sooner (bad input, too many executions, runtime down) get their own HTTP status; later ones
# arrive as an ``error`` event in a 200 stream.
STREAM_HEADER_WAIT_S = 1.0

_bearer = HTTPBearer(auto_error=False, description="An API key from SANDBOXD_API_KEYS.")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (401, "Missing or unknown API key (code: unauthenticated)."),
        (404, "The chat has no (usable) sandbox, or is another key's (code: sandbox_not_found)."),
        (409, "Conflicting session records (code: session_conflict)."),
        (413, "Code or body too large (code: code_too_large)."),
        (422, "Invalid input: invalid_chat_id, unsupported_language, invalid_timeout, ..."),
        (421, "The chat's sandbox runs on another node, named in the message (code: wrong_node)."),
        (429, "Too many executions in flight (too_many_executions) or sandboxes (sandbox_limit)."),
        (503, "Runtime or database unavailable, lock timeout, shutting down."),
    )
}


# What only the routes that take packages answer besides _ERRORS.
_PACKAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorBody,
        "description": "A package off the allow-list (code: package_not_allowed).",
    },
    501: {
        "model": ErrorBody,
        "description": "This runtime cannot install packages (code: environments_unsupported).",
    },
}


def _api(request: Request) -> SandboxApi:
    api: SandboxApi = request.app.state.api
    return api


async def require_api_key(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The calling tenant (the router-level dependency and each route's ``caller`` are one
    call: FastAPI caches a dependency per request)."""
    known: Caller | None = getattr(request.state, "caller", None)
    if known is not None:  # the request context middleware has just checked this very header
        return known
    authenticator: ApiKeyAuthenticator = request.app.state.authenticator
    return authenticator.authenticate(request.headers.get("authorization"))


# Routes that touch a chat take the caller and pass it on: the use cases enforce ownership.
CallerDep = Annotated[Caller, Depends(require_api_key)]


v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS)
health = APIRouter()
protected = APIRouter(dependencies=[Depends(require_api_key)])


@v1.post(
    "/chats/{chat_id}/executions",
    response_model=ExecutionView,
    responses=_PACKAGE_ERRORS,
    summary="Run code in the chat's sandbox (created or replaced as needed)",
    description=(
        "Returns the result. A timed-out execution is a 200 with timed_out=true, exit_code=null "
        "and state_lost=true. With `Accept: text/event-stream` the output is streamed as "
        "`stdout`/`stderr` events, then one `result` event (or an `error` event)."
    ),
)
async def execute(
    chat_id: ChatIdPath, body: ExecuteBody, request: Request, caller: CallerDep
) -> Response:
    api = _api(request)
    if EVENT_STREAM not in request.headers.get("accept", ""):
        return await execute_json(api, chat_id, body, caller)
    parsed = parse_chat_id(chat_id)
    execution_request = api.build_request(body.code, body.language, body.timeout_s)
    return await _stream(api, request, parsed, execution_request, tuple(body.packages), caller)


async def execute_json(
    api: SandboxApi, chat_id: str, body: ExecuteBody, caller: Caller
) -> Response:
    """The execute route's JSON answer; the fast path (``fast_execute.py``) answers with it too."""
    parsed = parse_chat_id(chat_id)
    execution_request = api.build_request(body.code, body.language, body.timeout_s)
    execution = await api.execute(
        parsed, execution_request, TRANSPORT, packages=tuple(body.packages), caller=caller
    )
    return JSONResponse(execution_json(execution))


@v1.put(
    "/chats/{chat_id}/sandbox",
    response_model=SandboxView,
    responses=_PACKAGE_ERRORS,
    summary="Create or reuse",
)
async def ensure_sandbox(
    chat_id: ChatIdPath, request: Request, caller: CallerDep, body: EnsureBody | None = None
) -> Response:
    body = body or EnsureBody.model_validate({})
    session = await _api(request).ensure_sandbox(
        parse_chat_id(chat_id), tuple(body.packages), body.language, caller
    )
    return JSONResponse(sandbox_json(session))


@v1.get("/chats/{chat_id}/sandbox", response_model=SandboxView, summary="The chat's sandbox")
async def get_sandbox(chat_id: ChatIdPath, request: Request, caller: CallerDep) -> Response:
    session = await _api(request).get_sandbox(parse_chat_id(chat_id), caller)
    return JSONResponse(sandbox_json(session))


@v1.delete(
    "/chats/{chat_id}/sandbox",
    status_code=204,
    response_class=Response,
    summary="Destroy the chat's sandbox (idempotent)",
)
async def destroy_sandbox(chat_id: ChatIdPath, request: Request, caller: CallerDep) -> Response:
    await _api(request).destroy_sandbox(parse_chat_id(chat_id), caller)
    return Response(status_code=204)


@v1.post(
    "/chats/{chat_id}/sandbox/renew",
    response_model=SandboxView,
    summary="Slide the idle deadline (404 when the chat has no usable sandbox)",
)
async def renew_sandbox(chat_id: ChatIdPath, request: Request, caller: CallerDep) -> Response:
    session = await _api(request).renew_sandbox(parse_chat_id(chat_id), caller)
    return JSONResponse(sandbox_json(session))


@v1.get("/sandboxes", response_model=SandboxPage, summary="List session records")
async def list_sandboxes(
    request: Request,
    caller: CallerDep,
    status: str | None = Query(
        None,
        description="running or dead (empty: either)",
        json_schema_extra={"enum": ["", "running", "dead"]},
    ),
    limit: int = Query(100, ge=1, le=1000),
    # Bounded: the stores' integers are 64-bit (a larger offset was a 500).
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> Response:
    parsed_status = _parse_status(status)
    # One extra row tells whether another page follows.
    sessions = await _api(request).list_sandboxes(parsed_status, limit + 1, offset, caller)
    more = len(sessions) > limit
    return JSONResponse(
        {
            "items": [sandbox_json(session) for session in sessions[:limit]],
            "limit": limit,
            "offset": offset,
            "next_offset": offset + limit if more else None,
        }
    )


@health.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    summary="Readiness: the database and the runtime answer",
    responses={503: {"description": "Not ready; `checks` says which dependency failed."}},
)
async def readyz(request: Request) -> Response:
    report = await _api(request).readiness()
    if report.ready:
        return JSONResponse({"status": "ready", "checks": report.checks})
    return JSONResponse(
        {"code": "not_ready", "message": "a dependency is unavailable", "checks": report.checks},
        status_code=503,
        headers={"Retry-After": "1"},
    )


@protected.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={401: _ERRORS[401]},
)
async def metrics(request: Request) -> Response:
    body = await _api(request).render_metrics()
    return Response(body, media_type=METRICS_CONTENT_TYPE)


def _parse_status(value: str | None) -> SandboxStatus | None:
    if value is None or value == "":
        return None
    try:
        return SandboxStatus(value.strip().lower())
    except ValueError as exc:
        allowed = ", ".join(status.value for status in SandboxStatus)
        raise InvalidInputError(f"status must be one of {allowed}; got {value!r}") from exc


async def _stream(
    api: SandboxApi,
    request: Request,
    chat_id: Any,
    execution_request: Any,
    packages: tuple[str, ...] = (),
    caller: Caller | None = None,
) -> Response:
    stream = api.execute_stream(
        chat_id, execution_request, TRANSPORT, packages, **({"caller": caller} if caller else {})
    )
    first = asyncio.ensure_future(anext(stream))
    done, _ = await asyncio.wait({first}, timeout=STREAM_HEADER_WAIT_S)
    if done:
        # Raises here, before any header went out, so the error table picks the status.
        first_event: StreamEvent | None = first.result()
    else:
        first_event = None
    metrics: ServiceMetrics = request.app.state.metrics
    logger: Logger = request.app.state.logger
    request_id = request_id_of(request)

    async def frames() -> AsyncGenerator[bytes, None]:
        try:
            if first_event is None:
                yield b": running\n\n"
                yield _sse(await first)
            else:
                yield _sse(first_event)
            async for event in stream:
                yield _sse(event)
        except SlowClientError:
            raise
        except Exception as exc:
            code = error_code(exc)
            metrics.errors.labels(code, TRANSPORT).inc()
            if is_generic(exc):
                log_error_detail(logger, "http_request_failed", exc, request_id, TRANSPORT)
            message = public_message(exc, request_id)
            yield _frame("error", {"code": code, "message": message, "request_id": request_id})

    return _EventStreamResponse(stream, frames())


class _EventStreamResponse(Response):
    """SSE whose every send is raced against the stream's buffer: a client that does not read
    while its output piles up is dropped (the connection closes), instead of holding memory."""

    media_type = EVENT_STREAM

    def __init__(self, stream: ExecutionStream, frames: AsyncGenerator[bytes, None]) -> None:
        super().__init__(
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            media_type=EVENT_STREAM,
        )
        # The length is unknown: Response put a Content-Length of the empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._stream = stream
        self._frames = frames

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async for frame in self._frames:
                message = {"type": "http.response.body", "body": frame, "more_body": True}
                await self._stream.deliver(send(message))
        except SlowClientError:
            # Returning without ending the body makes the server close the connection.
            return
        finally:
            await self._frames.aclose()
            await self._stream.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _sse(event: StreamEvent) -> bytes:
    if isinstance(event, OutputChunk) and event.stream is OutputStream.DISPLAY:
        return _frame("display", json.loads(event.data))
    if isinstance(event, OutputChunk):
        return _frame(event.stream.value, {"data": event.data})
    return _frame("result", execution_json(event))


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
