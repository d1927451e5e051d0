"""HTTP errors: every error becomes ``{"code", "message"}`` with its status from the error table
(``entrypoint.errors``); FastAPI's own validation and routing errors get codes of their own here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from domain.errors import SandboxServiceError
from entrypoint.errors import (
    INTERNAL_ERROR,
    error_row,
    is_generic,
    log_error_detail,
    public_message,
)
from entrypoint.metrics import ServiceMetrics
from usecase.ports import Logger

_RETRY_AFTER_SECONDS = "1"

_HTTP_CODES = {
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str, request_id: str) -> dict[str, str]:
    return {"code": code, "message": message, "request_id": request_id}


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    request_id: str = "",
) -> JSONResponse:
    extra = dict(headers or {})
    if status in (429, 503):
        extra.setdefault("Retry-After", _RETRY_AFTER_SECONDS)
    if status == 401:
        extra.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(error_body(code, message, request_id), status_code=status, headers=extra)


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", ""))


def service_error_response(
    exc: Exception, request_id: str, metrics: ServiceMetrics, logger: Logger
) -> JSONResponse:
    """A SandboxServiceError's response: its row's status and code, its public message."""
    row = error_row(exc)
    metrics.errors.labels(row.code, "http").inc()
    if is_generic(exc):
        log_error_detail(logger, "http_request_failed", exc, request_id, "http")
    return error_response(
        row.http_status, row.code, public_message(exc, request_id), request_id=request_id
    )


def unexpected_error_response(
    exc: Exception, request_id: str, metrics: ServiceMetrics, logger: Logger
) -> JSONResponse:
    """Anything else a handler raised (a bug): 500, the detail only in the log."""
    metrics.errors.labels(INTERNAL_ERROR, "http").inc()
    log_error_detail(logger, "http_unhandled_error", exc, request_id, "http")
    return error_response(
        500, INTERNAL_ERROR, public_message(exc, request_id), request_id=request_id
    )


def install_error_handlers(app: FastAPI, metrics: ServiceMetrics, logger: Logger) -> None:
    def count(code: str) -> None:
        metrics.errors.labels(code, "http").inc()

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        return service_error_response(exc, request_id_of(request), metrics, logger)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        count("invalid_request")
        return error_response(
            422,
            "invalid_request",
            _describe_validation(exc.errors()),
            request_id=request_id_of(request),
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        status, headers = exc.status_code, dict(exc.headers or {})
        if status == 400:
            # FastAPI's "error parsing the body" (not UTF-8, say): as invalid as malformed
            # JSON, which is a 422 invalid_request.
            status = 422
        if status == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        code = "invalid_request" if status == 422 else _HTTP_CODES.get(status, f"http_{status}")
        count(code)
        return error_response(
            status, code, str(exc.detail), headers, request_id=request_id_of(request)
        )

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(exc, request_id_of(request), metrics, logger)

    app.add_exception_handler(SandboxServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path. Starlette's 405 names only the first
    matching route's (each method is a route of its own here), so each method is tried."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.routes
        )
    ]


def _describe_validation(errors: Any) -> str:
    parts = []
    for error in list(errors)[:5]:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
