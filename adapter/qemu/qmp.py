"""QMP control with the qemu.qmp asyncio client, run on the adapter's own event-loop thread.

The runtime port is synchronous (use cases run on plain threads), so every QMP call is submitted
to one long-lived loop and waited for with a deadline; library errors become
RuntimeUnavailableError.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient, QMPError

from adapter.qemu.unix import connect_unix
from domain.errors import RuntimeUnavailableError

T = TypeVar("T")


class QmpEventLoop:
    """A daemon thread running an asyncio loop; ``run`` executes a coroutine there, blocking."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sandboxd-qmp", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float) -> T:
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(coroutine, timeout_s), self._loop
        )
        try:
            return future.result(timeout_s + 1.0)
        except TimeoutError as exc:
            future.cancel()
            raise RuntimeUnavailableError(f"QMP call timed out after {timeout_s:.1f}s") from exc
        except QMPError as exc:
            raise RuntimeUnavailableError(f"QMP: {exc}") from exc
        except OSError as exc:
            raise RuntimeUnavailableError(f"QMP socket: {exc}") from exc

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


class QmpConnection:
    """One QMP session with one VM (QEMU accepts a single monitor client at a time)."""

    def __init__(self, loop: QmpEventLoop, socket_path: Path, name: str) -> None:
        self._loop = loop
        self._path = socket_path
        self._client = QMPClient(name)

    def connect(self, timeout_s: float, still_starting: Callable[[], bool]) -> None:
        """Connect, retrying while the socket is not there yet and QEMU is still starting."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock = connect_unix(self._path, timeout_s=2.0)
            except OSError as exc:
                if time.monotonic() > deadline or not still_starting():
                    raise RuntimeUnavailableError(f"QMP socket {self._path}: {exc}") from exc
                time.sleep(0.01)
                continue
            self._loop.run(self._client.connect(sock), timeout_s=5.0)
            return

    def execute(
        self, command: str, arguments: dict[str, object] | None = None, timeout_s: float = 10.0
    ) -> Any:
        return self._loop.run(self._client.execute(command, arguments), timeout_s)

    def send_fd(self, name: str, fd: int) -> None:
        """Hand QEMU a descriptor (SCM_RIGHTS) and name it, for ``fd:NAME`` URIs."""

        async def send() -> None:
            self._client.send_fd_scm(fd)

        self._loop.run(send(), timeout_s=5.0)
        self.execute("getfd", {"fdname": name})

    def close(self) -> None:
        # disconnect() re-raises whatever ended the session; it is over either way.
        with contextlib.suppress(Exception):
            self._loop.run(self._client.disconnect(), timeout_s=5.0)
