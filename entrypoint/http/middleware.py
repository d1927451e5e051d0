"""Request id, API key, body-size guard and the access log, as one plain ASGI middleware.

Plain ASGI rather than BaseHTTPMiddleware: it adds no task per request and it passes streamed
(SSE) responses through untouched.

An unauthenticated request must cost almost nothing, so on the protected paths the key is
checked from the headers before the body is read: at most 16 KiB of it is read and dropped
(so that a client sees the 401 rather than a reset); past that the 401 closes the connection and
the rest of an upload is never read. The body is then read here, counting the bytes that
actually arrive (chunked bodies have no Content-Length to trust), and refused with 413 as soon as
it passes the limit; the application reads the buffered copy.
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.errors import UnauthenticatedError
from entrypoint.metrics import ServiceMetrics
from entrypoint.request_ids import request_id_or_new
from usecase.ports import Logger

REQUEST_ID_HEADER = "x-request-id"
# Paths that need a key (the routers' dependency checks it again, and documents it in OpenAPI).
_PROTECTED_PREFIXES = ("/v1/",)
_PROTECTED_PATHS = frozenset({"/metrics"})
# What an unauthenticated request may make the service read (and discard) at most.
_DRAIN_LIMIT = 16 * 1024


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: Logger,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        authenticator: ApiKeyAuthenticator,
    ) -> None:
        self._app = app
        self._logger = logger
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        request_id = request_id_or_new(headers.get(REQUEST_ID_HEADER))
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        try:
            has_body = _has_body(headers)
            refusal = self._unauthenticated(scope, headers)
            if refusal is not None:
                self._metrics.errors.labels("unauthenticated", "http").inc()
                # A small body is read and dropped, so that the client sees the 401 rather than
                # a reset; anything more is never read, and the connection closes.
                unread = has_body and not await _drain(receive, _DRAIN_LIMIT)
                await _reject(send_with_id, 401, "unauthenticated", refusal, request_id, unread)
                return
            # File uploads are streamed by their handler, which enforces the file size limit.
            streamed = is_streamed_upload(scope)
            if not streamed and self._too_large(headers):
                await self._reject_too_large(send_with_id, request_id)
                return
            if has_body and not streamed:
                body = await self._read_body(receive)
                if body is None:
                    await self._reject_too_large(send_with_id, request_id)
                    return
                receive = replay(body, receive)
            await self._app(scope, receive, send_with_id)
        finally:
            self._log(scope, status, request_id, time.perf_counter() - started)

    def _unauthenticated(self, scope: Scope, headers: dict[str, str]) -> str | None:
        if not is_protected(scope.get("path", "")):
            return None
        try:
            caller = self._authenticator.authenticate(headers.get("authorization"))
        except UnauthenticatedError as error:
            return str(error)
        # The routes' key dependency (and the execute fast path) take it from here.
        scope["state"]["caller"] = caller
        return None

    async def _read_body(self, receive: Receive) -> list[Message] | None:
        """The request's messages, or None once more than the limit has arrived."""
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            received += len(message.get("body", b""))
            if received > self._max_body_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    async def _reject_too_large(self, send: Send, request_id: str) -> None:
        self._metrics.errors.labels("code_too_large", "http").inc()
        message = f"request body is larger than {self._max_body_bytes} bytes"
        await _reject(send, 413, "code_too_large", message, request_id, True)

    def _too_large(self, headers: dict[str, str]) -> bool:
        length = headers.get("content-length", "")
        return length.isdigit() and int(length) > self._max_body_bytes

    def _log(self, scope: Scope, status: int, request_id: str, elapsed: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "")
        self._metrics.requests.labels(method, template, str(status)).inc()
        client = scope.get("client") or ("", 0)
        self._logger.info(
            "http_request",
            {
                "request_id": request_id,
                "method": method,
                "path": scope.get("path", ""),
                "route": template,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "client": f"{client[0]}:{client[1]}",
            },
        )


def _headers(scope: Scope) -> dict[str, str]:
    raw: list[tuple[bytes, bytes]] = scope.get("headers", [])
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in raw}


def is_protected(path: str) -> bool:
    """Whether a path needs an API key (a unit test holds this to the routers' dependencies)."""
    return path.startswith(_PROTECTED_PREFIXES) or path in _PROTECTED_PATHS


def is_streamed_upload(scope: Scope) -> bool:
    """A file upload (PUT /v1/chats/{id}/files/...): its body goes to the sandbox in chunks."""
    path: str = scope.get("path", "")
    return scope.get("method") == "PUT" and path.startswith("/v1/chats/") and "/files/" in path


def _has_body(headers: dict[str, str]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")


async def _drain(receive: Receive, limit: int) -> bool:
    """Read and discard a body of at most ``limit`` bytes; False when it is longer."""
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return True
        received += len(message.get("body", b""))
        if received > limit:
            return False
        if not message.get("more_body", False):
            return True


def replay(messages: list[Message], receive: Receive) -> Receive:
    """The buffered body first, then the connection's own messages (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _reject(
    send: Send, status: int, code: str, message: str, request_id: str, close: bool
) -> None:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if close:
        # The unread rest of the body is never read: the connection ends with the response.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
