"""Headless Chromium (Debian's package) for end-to-end page tests, behind a recording proxy.

Every request the browser makes, loopback included, goes through ``RecordingProxy``: requests to
the service's own origin are forwarded, anything else is recorded and refused. So a test sees
exactly which URLs a page tried to load, and a page that needs the internet fails visibly.
"""

from __future__ import annotations

import http.server
import shutil
import socketserver
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

# Chromium's own services (sign-in, component updates, network time) would call Google on their
# own; they are switched off or pointed at the discard port on loopback, so that every request
# left for the proxy to see comes from the page.
BROWSER_SERVICES_ORIGIN = "http://127.0.0.1:9"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # runs as root here; the page is our own
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-extensions",
    "--metrics-recording-only",
    "--hide-scrollbars",
    "--no-pings",
    "--no-default-browser-check",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate,"
    "AutofillServerCommunication,CertificateTransparencyComponentUpdater,DialMediaRouteProvider,"
    "PushMessaging",
    f"--gaia-url={BROWSER_SERVICES_ORIGIN}",
    f"--component-updater=url-source={BROWSER_SERVICES_ORIGIN}/",
)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_CONNECT(self) -> None:
        # TLS tunnels only ever lead away from the service (it speaks plain HTTP).
        self.server.record(f"https://{self.path}", allowed=False)
        self.send_error(403, "recording proxy: outside the service")

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def _forward(self) -> None:
        parts = urlsplit(self.path)
        allowed = f"{parts.scheme}://{parts.netloc}" == self.server.allowed_origin
        self.server.record(self.path, allowed=allowed)
        if not allowed:
            self.send_error(403, "recording proxy: outside the service")
            return
        request = urllib.request.Request(self.path, method=self.command)
        for name in ("Accept", "Accept-Encoding", "User-Agent"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, headers, body = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, headers, body = error.code, error.headers, error.read()
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _ProxyServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, allowed_origin: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.allowed_origin = allowed_origin
        self.requests: list[str] = []
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def record(self, url: str, *, allowed: bool) -> None:
        with self._lock:
            self.requests.append(url)
            if not allowed:
                self.refused.append(url)


class RecordingProxy:
    """An HTTP proxy on loopback that forwards only to ``allowed_origin`` and records all."""

    def __init__(self, allowed_origin: str) -> None:
        self._server = _ProxyServer(allowed_origin)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[str]:
        return list(self._server.requests)

    @property
    def refused(self) -> list[str]:
        """Refused requests of the page (the browser's own services excluded)."""
        return [url for url in self._server.refused if not url.startswith(BROWSER_SERVICES_ORIGIN)]

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def run_chromium(
    binary: str, proxy: RecordingProxy, url: str, *extra: str, budget_ms: int = 15000
) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run on ``url`` through ``proxy``, JavaScript given ``budget_ms`` of
    virtual time; a fresh profile each time (no cache hides a request)."""
    with tempfile.TemporaryDirectory(prefix="sandboxd-chromium-") as profile:
        return subprocess.run(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--proxy-server={proxy.url}",
                # Chromium sends loopback around a proxy unless told not to.
                "--proxy-bypass-list=<-loopback>",
                f"--virtual-time-budget={budget_ms}",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=Path(profile),
        )
