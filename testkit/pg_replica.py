"""A service replica's execute path on a shared PostgreSQL database, wired as the service
wires it (entrypoint/persistence.py), with a fake runtime: for tests of what the database sees."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

from domain.execution import ExecutionRequest
from repository.database import create_database_engine
from repository.postgres_lock import PostgresAdvisorySandboxLifecycleLocker, lock_pool_options
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository
from testkit.fakes import FakeClock, FakeLogger, FakeRuntime
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.ports import WarmSandboxSource
from usecase.sandbox import CleanupExpiredSandboxes, Placement

TTL = timedelta(minutes=5)
SLACK = timedelta(minutes=1)


class Replica:
    """One service replica: engines of its own on the shared database, shared clock and runtime."""

    def __init__(
        self,
        url: str,
        clock: FakeClock,
        runtime: FakeRuntime,
        warm: WarmSandboxSource | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.engine = create_database_engine(url)
        self.lock_engine = create_database_engine(url, lock_pool_options())
        self.locker = PostgresAdvisorySandboxLifecycleLocker(
            self.lock_engine, timeout_s=10, unlock_without_waiting=True
        )
        # Wired as the service wires it (entrypoint/persistence.py).
        self.repository = SqlAlchemySandboxSessionRepository(
            self.engine,
            fence=self.locker.verify_held,
            locked_read=self.locker.take_locked_read,
            lock_connection=self.locker.held_connection,
        )
        self.logger = FakeLogger()
        self.execute_code = ExecuteCode(
            self.repository,
            self.locker,
            runtime,
            clock,
            self.logger,
            TTL,
            renew_slack=SLACK,
            warm=warm,
            placement=placement,
        )
        self.sweep = CleanupExpiredSandboxes(
            self.repository, self.locker, runtime, clock, self.logger
        )

    def run(self, chat_id) -> None:
        self.execute_code.execute(ExecuteCodeCommand(chat_id, ExecutionRequest(code="print(1)")))

    def dispose(self) -> None:
        self.engine.dispose()
        self.lock_engine.dispose()


class PreStarted:
    """A warm source whose every claim is a sandbox started ahead of the request."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self._runtime = runtime
        self.given_back: list[UUID] = []

    def claim(self, *, chat_id, created_at, expires_at, packages=()):
        return self._runtime.create(
            session_id=uuid4(), chat_id=chat_id, created_at=created_at, expires_at=expires_at
        )

    def settle(self, session_id) -> None:
        pass

    def give_back(self, session_id) -> None:
        self.given_back.append(session_id)

    def make_room(self) -> None:
        pass

    def owns(self, session_id) -> bool:
        return False
