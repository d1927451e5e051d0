"""A full database (SQLite's SQLITE_FULL, here by a page cap) is StorageFullError, not a generic
outage; the failed write leaves nothing behind and writes work again once there is room.

The real disk-full run (a filled tmpfs under the service's data directory) is
test/e2e/test_faults_disk.py."""

from __future__ import annotations

import errno
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from domain.errors import RepositoryUnavailableError, StorageFullError
from domain.sandbox import SandboxSession, SandboxStatus
from repository.database import create_database_engine, is_storage_full, prepare_database
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _session() -> SandboxSession:
    return SandboxSession(
        session_id=uuid4(),
        chat_id=uuid4(),
        container_id="c" * 64,
        status=SandboxStatus.RUNNING,
        created_at=T0,
        expires_at=T0 + timedelta(minutes=15),
        runtime_kind="docker",
    )


def _capped_engine(url: str, pages: int) -> sa.Engine:
    engine = create_database_engine(url)

    @event.listens_for(engine, "connect")
    def _cap(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    return engine


def test_a_full_sqlite_database_is_storage_full_and_recovers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sandboxd.db'}"
    setup = prepare_database(create_database_engine(url), auto_migrate=True)
    with setup.connect() as connection:
        pages = int(connection.exec_driver_sql("PRAGMA page_count").scalar_one())
    setup.dispose()
    full = SqlAlchemySandboxSessionRepository(_capped_engine(url, pages))
    saved: list[SandboxSession] = []

    with pytest.raises(StorageFullError, match="full"):
        for _ in range(10_000):
            session = _session()
            full.save(session)
            saved.append(session)
    full.engine.dispose()
    roomy = SqlAlchemySandboxSessionRepository(create_database_engine(url))
    after = _session()
    roomy.save(after)

    assert [roomy.get(s.session_id) for s in saved] == saved
    assert roomy.get(after.session_id) == after
    with roomy.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"


def test_other_failures_stay_generic() -> None:
    assert not is_storage_full(OSError(errno.EACCES, "denied"))
    assert not is_storage_full(RepositoryUnavailableError("down"))
    assert is_storage_full(OSError(errno.EDQUOT, "quota"))
