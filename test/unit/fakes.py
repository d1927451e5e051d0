"""Hand-written fakes of the ports, for unit tests of use cases."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from uuid import UUID

from domain.errors import RuntimeUnavailableError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult, OutputChunk, OutputStream
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
    def __init__(self) -> None:
        self.messages: list[tuple[str, str, dict[str, str | int | float | bool]]] = []

    def _record(self, level: str, message: str, attrs: Mapping[str, object] | None) -> None:
        self.messages.append((level, message, dict(attrs or {})))  # type: ignore[arg-type]

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
        return [message for _, message, _ in self.messages]


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
    """In-memory sandboxes. Code is not run: the result echoes it."""

    def __init__(self) -> None:
        self.alive: dict[str, SandboxSession] = {}
        self.create_calls: list[UUID] = []
        self.stop_calls: list[str] = []
        self.execute_calls: list[tuple[str, str]] = []
        self.fail_create: Exception | None = None
        self.fail_stop: Exception | None = None
        # Container ids that die the next time code runs in them.
        self.die_on_execute: set[str] = set()
        self.die_on_every_execute = False
        self._lock = threading.Lock()

    def create(
        self, *, session_id: UUID, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession:
        with self._lock:
            self.create_calls.append(session_id)
            if self.fail_create is not None:
                raise self.fail_create
            session = SandboxSession(
                session_id=session_id,
                chat_id=chat_id,
                container_id=f"c-{session_id}",
                status=SandboxStatus.RUNNING,
                created_at=created_at,
                expires_at=expires_at,
                runtime_kind="fake",
            )
            self.alive[session.container_id] = session
            return session

    def stop(self, container_id: str) -> None:
        with self._lock:
            self.stop_calls.append(container_id)
            if self.fail_stop is not None:
                raise self.fail_stop
            self.alive.pop(container_id, None)

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        with self._lock:
            self.execute_calls.append((container_id, request.code))
            if container_id not in self.alive:
                raise SandboxGoneError(container_id)
            if self.die_on_every_execute or container_id in self.die_on_execute:
                self.die_on_execute.discard(container_id)
                del self.alive[container_id]
                raise SandboxGoneError(container_id)
        if on_output is not None:
            on_output(OutputChunk(OutputStream.STDOUT, request.code))
        return ExecutionResult(stdout=request.code, stderr="", exit_code=0, duration_s=0.001)

    def is_alive(self, container_id: str) -> bool:
        return container_id in self.alive

    def list_managed(self) -> list[ManagedSandbox]:
        return [
            ManagedSandbox(container_id=s.container_id, session_id=s.session_id, chat_id=s.chat_id)
            for s in self.alive.values()
        ]


class DownRuntime(FakeRuntime):
    """A runtime whose engine cannot be reached."""

    def create(
        self, *, session_id: UUID, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession:
        raise RuntimeUnavailableError("engine down")
