"""``sandboxd serve``: HTTP, gRPC and the cleanup worker in one process.

Start-up, in order: refuse to run without API keys (unless SANDBOXD_INSECURE_DEV=true), or
under the uid of the container sandboxes (SANDBOXD_DOCKER_USER); prepare
the runtime (the sandbox image is built on first run, with progress on stderr); check the
database schema (SQLite is migrated on first use, PostgreSQL must have been migrated with
``sandboxd migrate``); one sweep (expired sandboxes, then reconciliation: orphans removed,
vanished sandboxes marked dead); bind both ports; start the cleanup worker; print where it
listens.

Shutdown (SIGTERM or SIGINT): stop accepting connections, refuse new executions, let those in
flight finish for up to SANDBOXD_DRAIN_SECONDS, stop the worker. Sandboxes are left running:
they expire by their TTL, or a restarted service picks their chats up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
import uvloop

from domain.errors import SandboxServiceError
from entrypoint.application.pools import install_pool_metrics
from entrypoint.errors import (
    InsecureConfigurationError,
    ListenError,
    SandboxUidConflictError,
    error_row,
)
from entrypoint.grpc.server import host_port, start_grpc_server
from entrypoint.http.coalescing import CoalescingHttpToolsProtocol

if TYPE_CHECKING:
    from entrypoint.container import Container

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: this module owns shutdown for all parts."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_api_keys(keys: list[str], insecure_dev: bool) -> None:
    if not keys and not insecure_dev:
        raise InsecureConfigurationError(
            "no API keys: set SANDBOXD_API_KEYS=key1,key2 (or SANDBOXD_INSECURE_DEV=true to run "
            "without authentication on a development machine)"
        )


def check_sandbox_uid(*, own_uid: int, runtime: str, docker_user: str) -> None:
    """Container sandboxes run as SANDBOXD_DOCKER_USER and get a channel directory the service
    creates: under the same uid, user code would own the service's files (and could reach
    everything else the service owns). MicroVM users live in the guest, so only docker counts."""
    sandbox_uid = int(docker_user.partition(":")[0])
    if runtime == "docker" and own_uid == sandbox_uid:
        raise SandboxUidConflictError(
            f"the service runs as uid {own_uid}, the uid its sandboxes run as: run it as "
            "another user, or set SANDBOXD_DOCKER_USER to a uid the service does not use"
        )


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only on sockets that say they are TCP, and
    # with Nagle on, a response written as headers then body waits for the client's delayed ACK
    # (40 ms per request on Linux).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen for HTTP on {host_port(host, port)}: {exc}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Service:
    def __init__(self, container: Container) -> None:
        self._container = container
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # For embedders and tests that run the service on a thread of their own.
        self.listening = threading.Event()
        self.http_port = 0
        self.grpc_port = 0

    def request_stop(self) -> None:
        """Begin the graceful shutdown; callable from any thread."""
        if self._loop is None:
            self._stop.set()
        else:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _check_and_prepare(self) -> None:
        """Refuse a configuration that cannot be served safely, then make the runtime, the
        store and the sandboxes of a previous run ready (one sweep, with reconciliation)."""
        container = self._container
        settings = container.settings()
        server = settings.server
        check_api_keys(server.api_key_list + server.admin_key_list, server.insecure_dev)
        check_sandbox_uid(
            own_uid=os.getuid(), runtime=settings.runtime, docker_user=settings.docker.user
        )
        if not server.api_key_list:
            container.logger().warning(
                "authentication_disabled", {"reason": "SANDBOXD_INSECURE_DEV=true"}
            )
        await asyncio.to_thread(container.prepare_runtime)
        # Built now, not on first use: it refuses an engine without the configured OCI runtime.
        await asyncio.to_thread(container.runtime)
        await asyncio.to_thread(container.repository)  # checks (or migrates) the schema
        await asyncio.to_thread(container.sweeper().run_once)

    async def run(self, *, handle_signals: bool = True) -> None:
        container = self._container
        self._loop = asyncio.get_running_loop()
        server = container.settings().server
        logger = container.logger()
        await self._check_and_prepare()
        # After the start-up sweep: members of a previous run (also after kill -9) are gone.
        install_pool_metrics(container.metrics(), container.warm_pools())
        container.metrics().expose_sandbox_capacity(container.placement().max_sandboxes)
        pool_worker = container.pool_worker()
        await pool_worker.start()

        api = container.api()
        sock = bind_tcp(server.host, server.http_port)
        http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            container.http_app(),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(server.drain_seconds)),
            server_header=False,
            # One write per response instead of head and body apart (see coalescing.py).
            http=CoalescingHttpToolsProtocol,
        )
        http_server = _HttpServer(config)
        http_task = asyncio.create_task(http_server.serve(sockets=[sock]), name="http")
        grpc_server, grpc_port = await start_grpc_server(
            container.grpc_servicer(),
            server.host,
            server.grpc_port,
            interceptor=container.grpc_interceptor(),
            max_receive_message_bytes=server.grpc_max_receive_message_bytes,
            max_send_message_bytes=server.grpc_max_send_message_bytes,
            pool_servicer=container.grpc_pool_servicer(),
        )
        worker = container.cleanup_worker()
        worker.start()
        _freeze_startup_heap()

        loop = asyncio.get_running_loop()
        if handle_signals:
            for signum in _SIGNALS:
                loop.add_signal_handler(signum, self.request_stop)
        http_url = f"http://{host_port(server.host, http_port)}"
        logger.info(
            "service_started",
            {"http": http_url, "grpc": host_port(server.host, grpc_port)},
        )
        self.http_port, self.grpc_port = http_port, grpc_port
        self.listening.set()
        print(
            f"sandboxd listening: HTTP {http_url} (API docs {http_url}/docs), "
            f"gRPC {host_port(server.host, grpc_port)}",
            flush=True,
        )

        stop_waiter = asyncio.create_task(self._stop.wait())
        await asyncio.wait({stop_waiter, http_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_waiter.cancel()
        # The HTTP server ending on its own (not asked to) is a failure, reported after cleanup.
        http_failed = http_task.done() and not self._stop.is_set()
        logger.info("service_stopping", {"in_flight": api.inflight})

        http_server.should_exit = True
        results: tuple[Any, ...] = await asyncio.gather(
            http_task,
            grpc_server.stop(grace=server.drain_seconds),
            api.drain(server.drain_seconds),
            return_exceptions=True,
        )
        await worker.stop(timeout_s=max(server.drain_seconds, 1.0))
        await pool_worker.stop(timeout_s=max(server.drain_seconds, 1.0))
        api.close()
        if handle_signals:
            for signum in _SIGNALS:
                loop.remove_signal_handler(signum)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                logger.warning("shutdown_step_failed", {"error": type(result).__name__})
        logger.info("service_stopped", {"drained": results[2] is True})
        if http_failed:
            raise ListenError("the HTTP server stopped unexpectedly; see the log above")


def _freeze_startup_heap() -> None:
    """Keep the start-up heap (modules, the composition root, schemas: about a million objects)
    out of every later full collection.

    Measured under bench.bench_tenants: each gen2 collection walked that heap and stopped every
    thread for 100-200 ms, which was the service's p99. Frozen objects are never collected, so
    start-up garbage is collected first.
    """
    gc.collect()
    gc.freeze()


def serve(container: Container) -> int:
    try:
        # uvloop: the event loop's own work (socket reads and writes, the wake-up when a worker
        # thread hands an execution back) costs a fraction of asyncio's, on HTTP and gRPC alike.
        uvloop.run(Service(container).run())
    except SandboxServiceError as error:
        print(f"sandboxd: cannot start: {type(error).__name__}: {error}", file=sys.stderr)
        return error_row(error).exit_code
    except KeyboardInterrupt:
        return 130
    return 0
