"""The execute route's fast path: ``POST /v1/chats/{chat_id}/executions`` answered with JSON
without FastAPI's routing, dependency solving and exception middleware, which cost about as
much CPU as the rest of an execute together.

It sits right inside the request context middleware (request id, API key, body limit, access
log all apply as before) and answers with the route's own code (``routes.execute_json``) and
the error table's own responses. Whatever it does not take goes on to FastAPI unchanged, with
the body replayed: a stream (``Accept: text/event-stream``), a body that is not a valid
``ExecuteBody`` (FastAPI answers the 422 as always), another content type. The FastAPI route
stays the one the OpenAPI document describes.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.errors import SandboxServiceError
from domain.tenant import Caller
from entrypoint.application.sandbox_api import SandboxApi
from entrypoint.http.errors import service_error_response, unexpected_error_response
from entrypoint.http.middleware import replay
from entrypoint.http.routes import EVENT_STREAM, execute_json
from entrypoint.http.schemas import ExecuteBody
from entrypoint.metrics import ServiceMetrics
from usecase.ports import Logger

EXECUTE_PATH = "/v1/chats/{chat_id}/executions"
# Starlette's {chat_id} matches one path segment.
_EXECUTE = re.compile(r"/v1/chats/([^/]+)/executions")


class ExecuteFastPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api: SandboxApi,
        route: Any,
        metrics: ServiceMetrics,
        logger: Logger,
    ) -> None:
        self._app = app
        self._api = api
        # The FastAPI route it stands in for: the access log and metrics name its template.
        self._route = route
        self._metrics = metrics
        self._logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state") or {}
        # Set by the request context middleware once the key is known: a protected path.
        caller: Caller | None = state.get("caller")
        match = _EXECUTE.fullmatch(scope["path"]) if scope.get("method") == "POST" else None
        if caller is None or match is None or not _takes(scope):
            await self._app(scope, receive, send)
            return
        messages, body = await _read(receive)
        try:
            parsed = ExecuteBody.model_validate_json(body)
        except ValidationError:
            await self._app(scope, replay(messages, receive), send)
            return
        scope["route"] = self._route
        request_id = str(state.get("request_id", ""))
        try:
            response = await execute_json(self._api, match.group(1), parsed, caller)
        except SandboxServiceError as exc:
            response = service_error_response(exc, request_id, self._metrics, self._logger)
        except Exception as exc:
            response = unexpected_error_response(exc, request_id, self._metrics, self._logger)
        await response(scope, receive, send)


def _takes(scope: Scope) -> bool:
    """A JSON body and a JSON answer: the only case the fast path serves."""
    content_type = accept = b""
    for name, value in scope["headers"]:
        # The first of each, as Starlette's Headers.get reads them.
        if name == b"content-type" and not content_type:
            content_type = value
        elif name == b"accept" and not accept:
            accept = value
    return (
        content_type.split(b";", 1)[0].strip().lower() == b"application/json"
        and EVENT_STREAM.encode() not in accept
    )


async def _read(receive: Receive) -> tuple[list[Message], bytes]:
    """The request's messages (the middleware has buffered and bounded them) and its body."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return messages, b"".join(chunks)
