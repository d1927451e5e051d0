"""Request id, body-size guard and the access log, as one plain ASGI middleware.

Plain ASGI rather than BaseHTTPMiddleware: it adds no task or body copy per request and it
passes streamed (SSE) responses through untouched.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entrypoint.metrics import ServiceMetrics
from usecase.ports import Logger

REQUEST_ID_HEADER = "x-request-id"
# A caller's own id is echoed only when it is short and plain, so that it cannot forge log lines.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Generated ids: a random per-process prefix and a counter, unique without a syscall per request.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, *, logger: Logger, metrics: ServiceMetrics, max_body_bytes: int
    ) -> None:
        self._app = app
        self._logger = logger
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        request_id = headers.get(REQUEST_ID_HEADER, "")
        if not _SAFE_REQUEST_ID.match(request_id):
            request_id = new_request_id()
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
            if self._too_large(headers):
                self._metrics.errors.labels("code_too_large", "http").inc()
                await _reject_too_large(send_with_id, self._max_body_bytes)
            else:
                await self._app(scope, receive, send_with_id)
        finally:
            self._log(scope, status, request_id, time.perf_counter() - started)

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


async def _reject_too_large(send: Send, limit: int) -> None:
    body: dict[str, Any] = {
        "code": "code_too_large",
        "message": f"request body is larger than {limit} bytes",
    }
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
