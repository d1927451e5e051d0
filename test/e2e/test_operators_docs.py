"""/docs and /redoc work without internet: every asset comes from the service itself.

A real ``sandboxd serve``; a real headless Chromium loads the pages through a recording proxy that
forwards only to the service and refuses (and records) anything else; the rendered DOM lists every
route of the OpenAPI document. ``UPDATE_DOCS_SCREENSHOT=1`` also writes docs/api-docs.png.
"""

from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from testkit.browser import RecordingProxy, chromium_binary, run_chromium
from testkit.service import ROOT, ServiceFactory, ServiceProcess

pytestmark = pytest.mark.docker

_URL = re.compile(r"""(?:https?:)?//[^\s"'()<>]+""")
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)""")


class _References(HTMLParser):
    """Everything an HTML page makes the browser load: src and href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.references.append(value)


def _references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    return parser.references


@pytest.fixture(scope="module")
def service(module_services: ServiceFactory) -> ServiceProcess:
    return module_services()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_and_its_assets_name_no_other_host(service: ServiceProcess, page: str) -> None:
    response = httpx.get(service.http_url + page, timeout=10)
    assert response.status_code == 200
    html = response.text
    # Inline script and markup: no absolute URL at all (the OpenAPI URL is a path).
    assert _URL.findall(html) == []
    references = _references(html)
    assert references, "the page loads no asset?"
    origin = urlsplit(service.http_url)
    for reference in references:
        url = urlsplit(urljoin(service.http_url + page, reference))
        assert (url.scheme, url.netloc) == (origin.scheme, origin.netloc), reference
        asset = httpx.get(url.geturl(), timeout=10)
        assert asset.status_code == 200, reference
        if reference.endswith(".css"):
            # What a stylesheet makes the browser fetch: url(...) other than inline data.
            fetched = [u for u in _CSS_URL.findall(asset.text) if not u.startswith("data:")]
            assert [u for u in fetched if _URL.match(u)] == [], reference


def test_fastapi_cdn_pages_are_gone(service: ServiceProcess) -> None:
    html = httpx.get(service.http_url + "/docs", timeout=10).text
    assert "cdn.jsdelivr.net" not in html
    assert "fonts.googleapis.com" not in httpx.get(service.http_url + "/redoc", timeout=10).text


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        pytest.fail("chromium is not installed: scripts/setup.sh ops-tools")
    return binary


def test_chromium_renders_every_route_offline(
    service: ServiceProcess, chromium: str, tmp_path: Path
) -> None:
    paths = sorted(httpx.get(service.http_url + "/openapi.json", timeout=10).json()["paths"])
    assert "/v1/chats/{chat_id}/executions" in paths
    with RecordingProxy(service.http_url) as proxy:
        done = run_chromium(chromium, proxy, service.http_url + "/docs", "--dump-dom")
        screenshot = tmp_path / "api-docs.png"
        shot = run_chromium(
            chromium,
            proxy,
            service.http_url + "/docs",
            f"--screenshot={screenshot}",
            "--window-size=1280,1700",
        )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    assert rendered == set(paths), f"rendered {sorted(rendered)}; stderr: {done.stderr[-1000:]}"
    assert 'class="title"' in dom and "sandboxd" in dom
    # Loaded something, and nothing from outside the service.
    assert any(url.endswith("/openapi.json") for url in proxy.requests), proxy.requests
    assert any(url.endswith("/swagger-ui-bundle.js") for url in proxy.requests), proxy.requests
    assert proxy.refused == []
    assert shot.returncode == 0 and screenshot.stat().st_size > 20_000, shot.stderr[-1000:]
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(screenshot, ROOT / "docs" / "api-docs.png")


def test_chromium_renders_redoc_offline(service: ServiceProcess, chromium: str) -> None:
    with RecordingProxy(service.http_url) as proxy:
        done = run_chromium(chromium, proxy, service.http_url + "/redoc", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    # ReDoc renders each operation's summary in its menu.
    assert "Run code in the chat&#39;s sandbox" in done.stdout or (
        "Run code in the chat's sandbox" in done.stdout
    ), done.stdout[-2000:]
    assert proxy.refused == []
