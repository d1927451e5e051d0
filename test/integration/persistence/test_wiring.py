"""The composition root picks store, locker and leader from the database URL; `sandboxd migrate`
and the refusal to run on a database behind head or out of reach."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers

from entrypoint.cli import main
from entrypoint.container import Container
from entrypoint.settings import Settings
from repository.database import SchemaOutOfDateError, current_revision, head_revision
from repository.file_lock import FileSandboxLifecycleLocker, FileSweepLeaderLock
from repository.postgres_lock import (
    PostgresAdvisorySandboxLifecycleLocker,
    PostgresAdvisorySweepLeaderLock,
)
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository
from repository.sweep_leader import ProcessLocalSweepLeaderLock
from testkit.pg import temporary_database

ROOT = Path(__file__).resolve().parents[3]


def container_for(**settings) -> Container:
    container = Container()
    container.settings.override(providers.Object(Settings(**settings)))
    return container


def test_embedded_default_is_sqlite_in_the_data_dir_migrated_on_first_use(tmp_path) -> None:
    data_dir = tmp_path / "not-yet-there"
    container = container_for(data_dir=data_dir, database_url="")
    repository = container.repository()
    assert isinstance(repository, SqlAlchemySandboxSessionRepository)
    assert (data_dir / "sandboxd.db").is_file()
    assert current_revision(repository.engine) == head_revision()
    locker = container.locker()
    assert isinstance(locker, FileSandboxLifecycleLocker)
    assert locker.lock_dir == data_dir / "locks"
    assert isinstance(container.sweep_leader(), FileSweepLeaderLock)
    container.database_engine().dispose()


def test_in_memory_sqlite_uses_process_local_locks(tmp_path) -> None:
    container = container_for(data_dir=tmp_path, database_url="sqlite://")
    repository = container.repository()
    assert isinstance(repository, SqlAlchemySandboxSessionRepository)
    assert repository.list_sessions() == []
    assert isinstance(container.locker(), ProcessLocalSandboxLifecycleLocker)
    assert isinstance(container.sweep_leader(), ProcessLocalSweepLeaderLock)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def behind_postgres_url() -> Iterator[str]:
    with temporary_database("sandboxd_test_cli") as url:
        yield url


@pytest.mark.postgres
def test_postgres_is_never_migrated_implicitly_and_sandboxd_migrate_fixes_that(
    behind_postgres_url: str, tmp_path, capsys
) -> None:
    container = container_for(data_dir=tmp_path, database_url=behind_postgres_url)
    with pytest.raises(SchemaOutOfDateError, match="run: sandboxd migrate"):
        container.repository()
    assert main(["sandboxes", "list"], container) == 4
    assert "run: sandboxd migrate" in capsys.readouterr().err
    assert main(["migrate", "--check"], container) == 4
    capsys.readouterr()

    assert main(["migrate"], container) == 0
    out = capsys.readouterr().out
    assert "migrated to head" in out and ":***@" in out and ":sandboxd@" not in out
    assert main(["migrate", "--check"], container) == 0
    assert "is at head" in capsys.readouterr().out
    assert main(["sandboxes", "list"], container) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert isinstance(container.locker(), PostgresAdvisorySandboxLifecycleLocker)
    assert isinstance(container.sweep_leader(), PostgresAdvisorySweepLeaderLock)
    container.database_engine().dispose()
    container.lock_engine().dispose()


def test_database_down_at_start_exits_non_zero_naming_the_masked_url(tmp_path) -> None:
    env = {
        **os.environ,
        "SANDBOXD_DATA_DIR": str(tmp_path),
        "SANDBOXD_DATABASE_URL": "postgresql+psycopg://sandboxd:hunter2@127.0.0.1:1/sandboxd",
        "SANDBOXD_DATABASE_CONNECT_TIMEOUT_SECONDS": "2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "entrypoint.cli", "sandboxes", "list"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4
    assert "RepositoryUnavailableError" in result.stderr
    assert "postgresql+psycopg://sandboxd:***@127.0.0.1:1/sandboxd" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
