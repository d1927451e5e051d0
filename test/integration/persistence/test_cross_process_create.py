"""8 processes run CreateSandbox for one chat at the same moment: exactly one sandbox is
created, and every process gets that same session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from repository.sqlalchemy_session import SqlAlchemySandboxSessionRepository, sandbox_sessions

ROOT = Path(__file__).resolve().parents[3]
PROCESSES = 8


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.getfixturevalue(f"{request.param}_engine")
    with engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
    return engine


def test_concurrent_creates_in_8_processes_make_one_sandbox(engine: Engine, tmp_path) -> None:
    url = engine.url.render_as_string(hide_password=False)
    chat_id = uuid4()
    count_file, go_file = tmp_path / "creates", tmp_path / "go"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testkit.create_worker",
                url,
                str(chat_id),
                str(count_file),
                str(go_file),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready"
        go_file.touch()
        outputs = [worker.communicate(timeout=120)[0].strip() for worker in workers]
        assert [worker.returncode for worker in workers] == [0] * PROCESSES
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(10)

    creates = count_file.read_text().splitlines()
    assert len(creates) == 1
    session_ids = {UUID(line) for line in outputs}
    stored = SqlAlchemySandboxSessionRepository(engine).get_active_by_chat_id(chat_id)
    assert stored is not None
    assert session_ids == {stored.session_id}
    assert creates[0].split()[1] == str(stored.session_id)
