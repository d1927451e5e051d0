"""FastAPI application factory."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from entrypoint.application.files_api import FilesApi
from entrypoint.application.sandbox_api import SandboxApi
from entrypoint.auth import ApiKeyAuthenticator
from entrypoint.http.docs import mount_docs
from entrypoint.http.errors import install_error_handlers
from entrypoint.http.fast_execute import EXECUTE_PATH, ExecuteFastPath
from entrypoint.http.file_routes import files
from entrypoint.http.middleware import RequestContextMiddleware
from entrypoint.http.pools import pools_router
from entrypoint.http.routes import health, protected, require_api_key, v1
from entrypoint.metrics import ServiceMetrics
from usecase.pool_admin import ManagePools
from usecase.ports import Logger

# JSON escaping can grow a code string up to six times (\uXXXX); the body guard allows for it
# and leaves the exact limit, in UTF-8 bytes of code, to the ExecuteCode use case.
_JSON_GROWTH = 6
_BODY_OVERHEAD = 64 * 1024

DESCRIPTION = """
Chat-bound code sandboxes: every chat (a UUID) gets its own isolated, stateful sandbox.

Authenticate with `Authorization: Bearer <key>` (keys from SANDBOXD_API_KEYS); `/healthz`,
`/readyz` and the OpenAPI document are open. Every error is `{"code", "message"}` with a stable
code; every response carries an `x-request-id` header.
"""


class SandboxdApp(FastAPI):
    """FastAPI behind an edge of plain ASGI middleware: the request context (request id, API
    key, body limit, access log) and the execute fast path run before Starlette's and FastAPI's
    own middleware (server errors, telemetry, body limit, exceptions), which a fast-path execute
    then never enters: they cost about as much CPU per request as the edge itself. Everything
    else goes through them as before, inside the edge.
    """

    _edge: ASGIApp | None = None

    def put_behind(self, edge: Callable[[ASGIApp], ASGIApp]) -> None:
        self._edge = edge(super().__call__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._edge is None:
            await super().__call__(scope, receive, send)
        else:
            await self._edge(scope, receive, send)


def create_app(
    *,
    api: SandboxApi,
    authenticator: ApiKeyAuthenticator,
    metrics: ServiceMetrics,
    logger: Logger,
    access_logger: Logger,
    max_code_bytes: int,
    pools: Callable[[], ManagePools] | None = None,
    files_api: FilesApi | None = None,
) -> FastAPI:
    # FastAPI's own /docs and /redoc load their assets from a CDN; mount_docs serves them itself.
    app = SandboxdApp(
        title="sandboxd",
        version="1",
        description=DESCRIPTION.strip(),
        docs_url=None,
        redoc_url=None,
    )
    mount_docs(app)
    app.state.api = api
    app.state.files_api = files_api
    app.state.authenticator = authenticator
    app.state.metrics = metrics
    app.state.logger = logger
    app.include_router(v1)
    if pools is not None:
        # Resolved per request: the pool store needs the database, which apps without pools
        # (and unit tests) never touch.
        app.state.pools = pools
        app.include_router(pools_router(require_api_key))
    app.include_router(files)
    app.include_router(health)
    app.include_router(protected)
    install_error_handlers(app, metrics, logger)
    execute_route = next(r for r in v1.routes if getattr(r, "path", None) == EXECUTE_PATH)
    app.put_behind(
        lambda inner: RequestContextMiddleware(
            # Inside the request context: a fast-path execute is logged and counted as any.
            ExecuteFastPath(inner, api=api, route=execute_route, metrics=metrics, logger=logger),
            logger=access_logger,
            metrics=metrics,
            max_body_bytes=max_code_bytes * _JSON_GROWTH + _BODY_OVERHEAD,
            authenticator=authenticator,
        )
    )
    return app
