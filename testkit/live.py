"""Run the whole service (entrypoint.serve.Service) on a thread, on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from entrypoint.container import Container
from entrypoint.serve import Service


@dataclass
class LiveService:
    service: Service
    container: Container
    thread: threading.Thread
    errors: list[BaseException]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.service.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.service.grpc_port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        self.service.request_stop()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the service did not stop"


@contextmanager
def live_service(container: Container) -> Iterator[LiveService]:
    service = Service(container)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(service.run(handle_signals=False))
        except BaseException as exc:
            errors.append(exc)
            service.listening.set()

    thread = threading.Thread(target=run, name="live-service", daemon=True)
    live = LiveService(service, container, thread, errors)
    thread.start()
    assert service.listening.wait(30), "the service did not start"
    if errors:
        raise errors[0]
    try:
        yield live
    finally:
        if thread.is_alive():
            live.stop()
