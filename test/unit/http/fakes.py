"""A scriptable in-memory runtime and a container wired with it, for API-level unit tests.

The code sent decides what the fake does, so tests read like requests:
  "stream:a,b,c"  -> three stdout chunks, then a result whose stdout is "abc"
  "stderr:oops"   -> one stderr chunk "oops", exit code 1
  "block"         -> waits until ``runtime.gate`` is set (for in-flight and drain tests)
  "timeout"       -> a timed-out result (exit_code None, state_lost)
  "kill"          -> the sandbox dies under the code (SandboxGoneError), once per chat
  "flood:N"       -> N one-character stdout chunks (output flushed a byte at a time)
  "bigflood:N"    -> N distinct 64 KiB stdout chunks (a firehose for a client that never reads)
  "exit:N"        -> exit code N (any int, also outside int32)
anything else     -> echoed on stdout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import UUID

from dependency_injector import providers

from domain.errors import SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult, OutputChunk, OutputStream
from domain.sandbox import ManagedSandbox, SandboxSession, SandboxStatus
from entrypoint.container import Container
from entrypoint.settings import Settings
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from repository.sweep_leader import ProcessLocalSweepLeaderLock
from usecase.ports import OutputSink

API_KEY = "unit-test-key"


class ScriptedRuntime:
    def __init__(self) -> None:
        self.alive: dict[str, SandboxSession] = {}
        self.orphans: dict[str, ManagedSandbox] = {}
        self.executed: list[tuple[UUID, str]] = []
        self.stopped: list[str] = []
        self.gate = threading.Event()
        self.blocked = threading.Semaphore(0)  # released once per execution that starts blocking
        self.fail_create: Exception | None = None
        self.fail_list: Exception | None = None
        # When set, create() waits for it: pins worker threads in sandbox creation.
        self.create_gate: threading.Event | None = None
        self.finished: list[str] = []  # codes whose execution returned, in order
        self.list_calls = 0
        self._killed: set[UUID] = set()
        self._lock = threading.Lock()

    def create(
        self, *, session_id: UUID, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession:
        if self.create_gate is not None:
            self.blocked.release()
            self.create_gate.wait(timeout=30)
        if self.fail_create is not None:
            raise self.fail_create
        session = SandboxSession(
            session_id=session_id,
            chat_id=chat_id,
            container_id=f"fake-{session_id.hex[:12]}",
            status=SandboxStatus.RUNNING,
            created_at=created_at,
            expires_at=expires_at,
            runtime_kind="fake",
        )
        with self._lock:
            self.alive[session.container_id] = session
        return session

    def stop(self, container_id: str) -> None:
        with self._lock:
            self.stopped.append(container_id)
            self.alive.pop(container_id, None)
            self.orphans.pop(container_id, None)

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        with self._lock:
            session = self.alive.get(container_id)
            if session is None:
                raise SandboxGoneError(f"{container_id} is gone")
            if request.code == "kill" and session.chat_id not in self._killed:
                self._killed.add(session.chat_id)
                del self.alive[container_id]
                raise SandboxGoneError(f"{container_id} died")
            self.executed.append((session.chat_id, request.code))
        result = self._run(request, on_output or (lambda chunk: None))
        with self._lock:
            self.finished.append(request.code)
        return result

    def _run(self, request: ExecutionRequest, emit: OutputSink) -> ExecutionResult:
        code = request.code
        if code == "block":
            self.blocked.release()
            self.gate.wait(timeout=30)
            return ExecutionResult(stdout="unblocked", stderr="", exit_code=0, duration_s=0.01)
        if code == "timeout":
            return ExecutionResult(
                stdout="partial",
                stderr="",
                exit_code=None,
                duration_s=request.timeout_s,
                timed_out=True,
                state_lost=True,
            )
        if code.startswith("stream:"):
            parts = code.removeprefix("stream:").split(",")
            for part in parts:
                emit(OutputChunk(OutputStream.STDOUT, part))
            return ExecutionResult(stdout="".join(parts), stderr="", exit_code=0, duration_s=0.01)
        if code.startswith("flood:"):
            count = int(code.removeprefix("flood:"))
            for _ in range(count):
                emit(OutputChunk(OutputStream.STDOUT, "x"))
            return ExecutionResult(stdout="x" * count, stderr="", exit_code=0, duration_s=0.01)
        if code.startswith("bigflood:"):
            count = int(code.removeprefix("bigflood:"))
            for index in range(count):
                # A new string per chunk: shared ones would cost no memory when queued.
                emit(OutputChunk(OutputStream.STDOUT, f"{index:08d}".ljust(64 * 1024, "y")))
            return ExecutionResult(stdout="", stderr="", exit_code=0, duration_s=0.01)
        if code.startswith("exit:"):
            exit_code = int(code.removeprefix("exit:"))
            return ExecutionResult(stdout="", stderr="", exit_code=exit_code, duration_s=0.01)
        if code.startswith("stderr:"):
            text = code.removeprefix("stderr:")
            emit(OutputChunk(OutputStream.STDERR, text))
            return ExecutionResult(stdout="", stderr=text, exit_code=1, duration_s=0.01)
        emit(OutputChunk(OutputStream.STDOUT, code))
        return ExecutionResult(stdout=code, stderr="", exit_code=0, duration_s=0.001)

    def is_alive(self, container_id: str) -> bool:
        return container_id in self.alive

    def list_managed(self) -> list[ManagedSandbox]:
        self.list_calls += 1
        if self.fail_list is not None:
            raise self.fail_list
        with self._lock:
            live = [
                ManagedSandbox(s.container_id, s.session_id, s.chat_id) for s in self.alive.values()
            ]
            return live + list(self.orphans.values())


class RecordingLogger:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _record(self, message: str, attrs: Any) -> None:
        with self._lock:
            self.events.append((message, dict(attrs or {})))

    def debug(self, message: str, attrs: Any = None) -> None:
        self._record(message, attrs)

    def info(self, message: str, attrs: Any = None) -> None:
        self._record(message, attrs)

    def warning(self, message: str, attrs: Any = None) -> None:
        self._record(message, attrs)

    def error(self, message: str, attrs: Any = None) -> None:
        self._record(message, attrs)

    def named(self, message: str) -> list[dict[str, Any]]:
        with self._lock:
            return [attrs for name, attrs in self.events if name == message]


def make_container(runtime: ScriptedRuntime | None = None, **settings: Any) -> Container:
    """The real composition root, with the store, locks and runtime swapped for in-memory ones."""
    values: dict[str, Any] = {
        "api_keys": API_KEY,
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "drain_seconds": 5.0,
        "database_url": "sqlite://",
    }
    values.update(settings)
    container = Container()
    container.settings.override(providers.Object(Settings(**values)))
    container.repository.override(providers.Singleton(InMemorySandboxSessionRepository))
    container.locker.override(providers.Singleton(ProcessLocalSandboxLifecycleLocker))
    container.sweep_leader.override(providers.Singleton(ProcessLocalSweepLeaderLock))
    container.runtime.override(providers.Object(runtime or ScriptedRuntime()))
    container.prepare_runtime.override(providers.Callable(lambda: None))
    container.logger.override(providers.Singleton(RecordingLogger))
    container.access_logger.override(providers.Singleton(RecordingLogger))
    return container


@contextmanager
def released(runtime: ScriptedRuntime) -> Iterator[None]:
    """Make sure blocked executions end with the test, whatever happens."""
    try:
        yield
    finally:
        runtime.gate.set()


AUTH = {"Authorization": f"Bearer {API_KEY}"}
