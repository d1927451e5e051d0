"""Interactive API docs (Swagger UI at /docs, ReDoc at /redoc) served by the service itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google), so on a
machine without internet they are blank. These pages use the same FastAPI HTML helpers, but every
asset comes from the pinned ``fastapi-offline`` wheel (Swagger UI 5 and ReDoc 2 dist files) under
``/docs-assets``: no request leaves the service. Swagger UI's online validator is switched off,
as it would post the schema to validator.swagger.io. ReDoc's bundle shows Redocly's logo from
cdn.redoc.ly in its side bar; that one URL is blanked when the bundle is served (the image then
fails at once and ReDoc hides it).
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
_REDOC_BUNDLE = "redoc.standalone.js"
_REDOC_REMOTE_LOGO = b'"https://cdn.redoc.ly/redoc/logo-mini.svg"'


def assets_dir() -> Path:
    """The directory of the pinned Swagger UI and ReDoc files (inside the installed wheel)."""
    return Path(str(files("fastapi_offline") / "static"))


@functools.cache
def _redoc_bundle() -> bytes:
    bundle = (assets_dir() / _REDOC_BUNDLE).read_bytes()
    # A pinned bundle: if the string moved, fail loudly rather than leak a request.
    if bundle.count(_REDOC_REMOTE_LOGO) != 1:
        raise RuntimeError("the pinned ReDoc bundle changed; revisit entrypoint/http/docs.py")
    return bundle.replace(_REDOC_REMOTE_LOGO, b'""')


def mount_docs(app: FastAPI) -> None:
    """Add /docs, /redoc and their assets; the app must be created with docs_url=None and
    redoc_url=None so that FastAPI's CDN pages are not there."""

    # Before the mount, so that it wins over the file of the same name.
    @app.get(f"{ASSETS_URL}/{_REDOC_BUNDLE}", include_in_schema=False)
    async def redoc_bundle() -> Response:
        return Response(
            _redoc_bundle(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def asset(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"

    def openapi_url(request: Request) -> str:
        return f"{request.scope.get('root_path', '')}{app.openapi_url}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url(request),
            title=f"{app.title} - API docs",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_js_url=asset(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset(request, "swagger-ui.css"),
            swagger_favicon_url=asset(request, "favicon.png"),
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url(request),
            title=f"{app.title} - ReDoc",
            redoc_js_url=asset(request, _REDOC_BUNDLE),
            redoc_favicon_url=asset(request, "favicon.png"),
            with_google_fonts=False,
        )
