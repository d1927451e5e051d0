"""The SQLite setup's chat lock files: their directory is made when missing (also when removed
while the service runs), and one that cannot be made is a clean repository error."""

from __future__ import annotations

import shutil
from pathlib import Path
from uuid import uuid4

import pytest

from domain.errors import RepositoryUnavailableError
from repository.file_lock import FileSandboxLifecycleLocker


def test_the_lock_directory_is_made_on_first_use_and_again_if_removed(tmp_path: Path) -> None:
    lock_dir = tmp_path / "data" / "locks"
    locker = FileSandboxLifecycleLocker(lock_dir, timeout_s=1)
    chat = uuid4()
    with locker.lock(chat):
        assert (lock_dir / f"chat-{chat}.lock").exists()
    shutil.rmtree(tmp_path / "data")
    with locker.lock(chat):
        assert (lock_dir / f"chat-{chat}.lock").exists()


def test_a_lock_directory_that_cannot_be_made_is_a_repository_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    locker = FileSandboxLifecycleLocker(not_a_directory / "locks", timeout_s=1)
    with (
        pytest.raises(RepositoryUnavailableError, match="cannot open lock file"),
        locker.lock(uuid4()),
    ):
        pass
