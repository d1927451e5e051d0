"""One of the processes of the cross-process CreateSandbox test.

    python -m testkit.create_worker DATABASE_URL CHAT_ID COUNT_FILE GO_FILE

Wires CreateSandbox the way the container does for DATABASE_URL (SQLAlchemy store; PostgreSQL
advisory locker or file locker), with a runtime that records every create in COUNT_FILE. Prints
"ready" once connected, waits for GO_FILE to appear, creates, and prints the session id.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

from adapter.clock import SystemClock
from domain.sandbox import SandboxSession, SandboxStatus
from repository.database import create_database_engine, is_postgresql, sqlite_path
from repository.file_lock import FileSandboxLifecycleLocker
from repository.postgres_lock import PostgresAdvisorySandboxLifecycleLocker
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository
from usecase.sandbox import CreateSandbox, CreateSandboxCommand


class CountingRuntime:
    """Appends one line per create to a file shared by all the processes; slow on purpose, so
    that creates racing without the lock would overlap."""

    def __init__(self, count_file: Path) -> None:
        self._count_file = count_file

    def create(
        self, *, session_id: UUID, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession:
        fd = os.open(self._count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{os.getpid()} {session_id}\n".encode())
        finally:
            os.close(fd)
        time.sleep(0.2)
        return SandboxSession(
            session_id, chat_id, f"box-{session_id}", SandboxStatus.RUNNING, created_at, expires_at
        )

    def stop(self, container_id: str) -> None:
        raise AssertionError(f"nothing should be stopped here ({container_id})")


class QuietLogger:
    def debug(self, message: str, attrs: object = None) -> None: ...
    def info(self, message: str, attrs: object = None) -> None: ...
    def warning(self, message: str, attrs: object = None) -> None: ...
    def error(self, message: str, attrs: object = None) -> None: ...


def main() -> None:
    url, chat, count_file, go_file = sys.argv[1:5]
    engine = create_database_engine(url)
    if is_postgresql(url):
        locker: object = PostgresAdvisorySandboxLifecycleLocker(create_database_engine(url), 30)
    else:
        path = sqlite_path(url)
        assert path is not None
        locker = FileSandboxLifecycleLocker(path.parent / "locks", timeout_s=30)
    with engine.connect():  # connected before the start signal, so the race is the create
        pass
    create = CreateSandbox(
        SqlAlchemySandboxSessionRepository(engine),
        locker,  # type: ignore[arg-type]
        CountingRuntime(Path(count_file)),  # type: ignore[arg-type]  # only creates
        SystemClock(),
        QuietLogger(),
        ttl=timedelta(minutes=15),
    )
    print("ready", flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.005)
    session = create.execute(CreateSandboxCommand(UUID(chat)))
    print(session.session_id, flush=True)


if __name__ == "__main__":
    main()
