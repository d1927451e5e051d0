"""Hand-written fakes of the ports, for unit tests of use cases and of the API layers.

``FakeRuntime`` keeps its sandboxes in memory. The code sent decides what it does, so tests read
like requests:
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

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from domain.environment import BuiltEnvironment, Environment
from domain.errors import (
    FilePathRefusedError,
    FileTooLargeError,
    SandboxGoneError,
    WorkspaceFileNotFoundError,
    WorkspaceFullError,
)
from domain.execution import ExecutionRequest, ExecutionResult, OutputChunk, OutputStream
from domain.files import StoredFile, WorkspaceEntry, WorkspaceListing, check_workspace_path
from domain.sandbox import ManagedSandbox, SandboxSession, SandboxStatus
from usecase.ports import OutputSink

T0 = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


class FakeLogger:
    """Keeps every event with its level and attributes; safe to share between threads."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _record(self, level: str, message: str, attrs: Mapping[str, object] | None) -> None:
        with self._lock:
            self.messages.append((level, message, dict(attrs or {})))

    def debug(
        self, message: str, attrs: Mapping[str, str | int | float | bool] | None = None
    ) -> None:
        self._record("debug", message, attrs)

    def info(
        self, message: str, attrs: Mapping[str, str | int | float | bool] | None = None
    ) -> None:
        self._record("info", message, attrs)

    def warning(
        self, message: str, attrs: Mapping[str, str | int | float | bool] | None = None
    ) -> None:
        self._record("warning", message, attrs)

    def error(
        self, message: str, attrs: Mapping[str, str | int | float | bool] | None = None
    ) -> None:
        self._record("error", message, attrs)

    def events(self) -> list[str]:
        """The event names, in order."""
        with self._lock:
            return [message for _, message, _ in self.messages]

    def named(self, message: str) -> list[dict[str, Any]]:
        """The attributes of every event with this name."""
        with self._lock:
            return [attrs for _, name, attrs in self.messages if name == message]


class RecordingLocker:
    """Counts lock acquisitions and whether a lock is held right now."""

    def __init__(self) -> None:
        self.chat_ids: list[UUID] = []
        self.held: set[UUID] = set()

    @contextmanager
    def lock(self, chat_id: UUID) -> Iterator[None]:
        self.chat_ids.append(chat_id)
        self.held.add(chat_id)
        try:
            yield
        finally:
            self.held.discard(chat_id)


class FakeRuntime:
    """In-memory sandboxes that run scripted code (see the module docstring)."""

    def __init__(self) -> None:
        self.alive: dict[str, SandboxSession] = {}
        # Managed sandboxes no session points to, as list_managed reports them.
        self.orphans: dict[str, ManagedSandbox] = {}
        self.create_calls: list[UUID] = []
        self.stopped: list[str] = []
        self.executed: list[tuple[UUID, str]] = []
        self.fail_create: Exception | None = None
        self.fail_stop: Exception | None = None
        self.fail_list: Exception | None = None
        # Container ids that die the next time code runs in them.
        self.die_on_execute: set[str] = set()
        self.die_on_every_execute = False
        self.gate = threading.Event()
        self.blocked = threading.Semaphore(0)  # released once per execution that starts blocking
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
        with self._lock:
            self.create_calls.append(session_id)
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
            self.alive[session.container_id] = session
            return session

    def stop(self, container_id: str) -> None:
        with self._lock:
            self.stopped.append(container_id)
            if self.fail_stop is not None:
                raise self.fail_stop
            self.alive.pop(container_id, None)
            self.orphans.pop(container_id, None)

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        with self._lock:
            session = self.alive.get(container_id)
            if session is None:
                raise SandboxGoneError(f"{container_id} is gone")
            if self._dies(session, request.code):
                del self.alive[container_id]
                raise SandboxGoneError(f"{container_id} died")
            self.executed.append((session.chat_id, request.code))
        result = self._run(request, on_output or (lambda chunk: None))
        with self._lock:
            self.finished.append(request.code)
        return result

    def _dies(self, session: SandboxSession, code: str) -> bool:
        if self.die_on_every_execute or session.container_id in self.die_on_execute:
            self.die_on_execute.discard(session.container_id)
            return True
        if code == "kill" and session.chat_id not in self._killed:
            self._killed.add(session.chat_id)
            return True
        return False

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


class FakeEnvironmentStore:
    """An L2 environment store that "builds" instantly; ``fail`` makes every ensure raise."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.ensured: list[Environment] = []

    def key_for(self, environment: Environment) -> str:
        return f"python-v0.1-00000000-{len(environment.packages):016x}"

    def find(self, key: str) -> BuiltEnvironment | None:
        return None

    def ensure(self, environment: Environment) -> BuiltEnvironment:
        if self.fail is not None:
            raise self.fail
        self.ensured.append(environment)
        key = self.key_for(environment)
        return BuiltEnvironment(key, environment, f"sandboxd-env:{key}", 1)

    def remove(self, key: str) -> None:
        pass


class FakeEnvironmentRuntime:
    """Creates through a FakeRuntime (so stop/execute work) and records what it did."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.created_from: list[str] = []
        self.installed: list[tuple[str, Environment]] = []
        self.fail_install: Exception | None = None

    def create_from(
        self,
        environment: BuiltEnvironment,
        *,
        session_id: UUID,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
    ) -> SandboxSession:
        self.created_from.append(environment.reference)
        return self.runtime.create(
            session_id=session_id, chat_id=chat_id, created_at=created_at, expires_at=expires_at
        )

    def install_packages(self, container_id: str, environment: Environment) -> None:
        if self.fail_install is not None:
            raise self.fail_install
        self.installed.append((container_id, environment))


class FakeFileStore:
    """Workspaces in memory, per container id; refusals as the agent makes them.

    ``symlinks`` holds paths that user code turned into links leading out (refused like the
    agent refuses them); ``capacity`` is the workspace size for every sandbox; ``list_limit``
    the most entries a listing holds (past it, ``truncated``).
    """

    def __init__(self, runtime: FakeRuntime, capacity: int = 10 * 1024 * 1024) -> None:
        self.runtime = runtime
        self.capacity = capacity
        self.workspaces: dict[str, dict[str, bytes]] = {}
        self.symlinks: set[str] = set()
        self.list_limit: int | None = None

    def _workspace(self, container_id: str) -> dict[str, bytes]:
        if container_id not in self.runtime.alive:
            raise SandboxGoneError(f"{container_id} is gone")
        return self.workspaces.setdefault(container_id, {})

    def _check(self, path: str) -> None:
        check_workspace_path(path)
        if any(path == link or path.startswith(link + "/") for link in self.symlinks):
            raise FilePathRefusedError("the path leads through a symlink")

    def write_file(
        self, container_id: str, path: str, chunks: Iterable[bytes], max_bytes: int
    ) -> StoredFile:
        workspace = self._workspace(container_id)
        self._check(path)
        data = b""
        for chunk in chunks:
            data += chunk
            if len(data) > max_bytes:
                raise FileTooLargeError(f"larger than {max_bytes} bytes")
        used = sum(len(v) for k, v in workspace.items() if k != path)
        if used + len(data) > self.capacity:
            raise WorkspaceFullError("no space left on device")
        workspace[path] = data
        return StoredFile(path, len(data), hashlib.sha256(data).hexdigest())

    def read_file(
        self, container_id: str, path: str, sink: Callable[[bytes], object]
    ) -> StoredFile:
        self._check(path)
        data = self._workspace(container_id).get(path)
        if data is None:
            raise WorkspaceFileNotFoundError("no such file")
        sink(data)
        return StoredFile(path, len(data), hashlib.sha256(data).hexdigest())

    def list_files(self, container_id: str, prefix: str) -> WorkspaceListing:
        workspace = self._workspace(container_id)
        epoch = datetime(2026, 1, 1, tzinfo=UTC)
        entries = tuple(
            WorkspaceEntry(path, len(data), epoch)
            for path, data in sorted(workspace.items())
            if path.startswith(prefix)
        )
        limit = len(entries) if self.list_limit is None else self.list_limit
        return WorkspaceListing(entries[:limit], truncated=len(entries) > limit)

    def delete_file(self, container_id: str, path: str) -> None:
        self._check(path)
        if self._workspace(container_id).pop(path, None) is None:
            raise WorkspaceFileNotFoundError("no such file")
