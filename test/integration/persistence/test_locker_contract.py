"""The SandboxLifecycleLocker contract, run against the process-local, file and PostgreSQL
advisory lockers, plus what only the cross-process ones promise (other processes, bounded
waits, release when the holder dies) and the sweep-leader locks."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from domain.errors import LockTimeoutError, RepositoryUnavailableError
from repository.database import create_database_engine
from repository.file_lock import FileSweepLeaderLock
from repository.postgres_lock import (
    PostgresAdvisorySandboxLifecycleLocker,
    PostgresAdvisorySweepLeaderLock,
    chat_lock_key,
)
from repository.sweep_leader import ProcessLocalSweepLeaderLock

ROOT = Path(__file__).resolve().parents[3]


def run_in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# --- every locker ------------------------------------------------------------------------


def test_one_holder_per_chat_at_a_time(make_locker) -> None:
    locker = make_locker()
    chat_id = uuid4()
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most_inside
        for _ in range(5):
            with locker.lock(chat_id):
                with guard:
                    inside += 1
                    most_inside = max(most_inside, inside)
                time.sleep(0.002)
                with guard:
                    inside -= 1

    threads = [run_in_thread(work) for _ in range(4)]
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert most_inside == 1


def test_other_chats_are_not_blocked(make_locker) -> None:
    locker = make_locker()
    other_done = threading.Event()
    with locker.lock(uuid4()):

        def other() -> None:
            with locker.lock(uuid4()):
                other_done.set()

        run_in_thread(other)
        assert other_done.wait(10)


def test_released_on_exception(make_locker) -> None:
    locker = make_locker()
    chat_id = uuid4()
    with pytest.raises(RuntimeError), locker.lock(chat_id):
        raise RuntimeError("boom")
    relocked = threading.Event()

    def again() -> None:
        with locker.lock(chat_id):
            relocked.set()

    run_in_thread(again)
    assert relocked.wait(10)


def test_waiters_in_one_process_are_served_in_arrival_order(make_locker) -> None:
    locker = make_locker()
    chat_id = uuid4()
    order: list[int] = []
    threads = []
    with locker.lock(chat_id):
        for n in range(5):

            def wait_turn(n: int = n) -> None:
                with locker.lock(chat_id):
                    order.append(n)

            threads.append(run_in_thread(wait_turn))
            time.sleep(0.1)  # lets thread n queue up before thread n+1 arrives
    for thread in threads:
        thread.join(30)
    assert order == [0, 1, 2, 3, 4]


# --- the cross-process lockers ---------------------------------------------------------------


@contextmanager
def holder_process(kind: str, scope: str, what: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.lock_holder", kind, scope, what],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process
    finally:
        process.kill()
        process.wait(10)


CROSS = pytest.mark.parametrize(
    "locker_kind", ["file", pytest.param("postgres", marks=pytest.mark.postgres)]
)


@CROSS
def test_a_lock_held_by_another_process_times_out_then_is_freed_when_it_dies(
    make_locker, locker_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    scope = (
        str(tmp_path / "locks")
        if locker_kind == "file"
        else str(request.getfixturevalue("postgres_url"))
    )
    locker = make_locker(timeout_s=0.3)
    chat_id = uuid4()
    with holder_process(locker_kind, scope, str(chat_id)) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeoutError), locker.lock(chat_id):
            pass
        with locker.lock(uuid4()):  # another chat is free meanwhile
            pass
        holder.kill()  # no clean release: the OS (or the server) must free it
        holder.wait(10)
        patient = make_locker(timeout_s=10)
        with patient.lock(chat_id):
            pass


@CROSS
def test_a_timed_out_waiter_does_not_stall_the_ones_behind_it(make_locker) -> None:
    locker = make_locker(timeout_s=0.2)
    patient = make_locker(timeout_s=30)  # same scope, a longer wait
    chat_id = uuid4()
    got_it = threading.Event()
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with patient.lock(chat_id):
            holding.set()
            release.wait(30)

    run_in_thread(hold)
    assert holding.wait(10)
    with pytest.raises(LockTimeoutError), locker.lock(chat_id):
        pass

    def behind() -> None:
        with patient.lock(chat_id):
            got_it.set()

    run_in_thread(behind)
    release.set()
    assert got_it.wait(10)


@pytest.mark.postgres
def test_postgres_lock_is_freed_when_the_holders_connection_is_killed(
    postgres_url: str, postgres_engine
) -> None:
    holder_engine = create_database_engine(postgres_url)
    holder = PostgresAdvisorySandboxLifecycleLocker(holder_engine, timeout_s=5)
    other = PostgresAdvisorySandboxLifecycleLocker(create_database_engine(postgres_url), 10)
    chat_id = uuid4()
    key = chat_lock_key(chat_id)
    with holder.lock(chat_id):
        with postgres_engine.connect() as admin:
            pids = admin.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND classid::bigint = :high AND objid::bigint = :low"
                ),
                # A bigint key shows as two 32-bit halves.
                {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF},
            ).scalars()
            pids = list(pids)
            assert len(pids) == 1
            admin.execute(sa.select(sa.func.pg_terminate_backend(pids[0])))
        with other.lock(chat_id):  # granted although the holder never released
            pass
    # Leaving the hold on a dead connection raised nothing, and the holder can lock again.
    with holder.lock(chat_id):
        pass
    holder_engine.dispose()


@pytest.mark.postgres
def test_postgres_locker_with_the_database_down_says_so() -> None:
    engine = create_database_engine("postgresql+psycopg://sandboxd:pw-secret@127.0.0.1:1/x")
    locker = PostgresAdvisorySandboxLifecycleLocker(engine, timeout_s=1)
    with pytest.raises(RepositoryUnavailableError) as raised, locker.lock(uuid4()):
        pass
    assert "pw-secret" not in str(raised.value) and "127.0.0.1:1" in str(raised.value)


def test_chat_lock_keys_are_stable_across_versions() -> None:
    # Replicas of different versions must agree on a chat's key: never change the derivation.
    assert chat_lock_key(UUID(int=1)) == chat_lock_key(UUID(int=1))
    assert chat_lock_key(UUID(int=1)) == FROZEN_KEY_OF_UUID_1
    assert chat_lock_key(UUID(int=1)) != chat_lock_key(UUID(int=2))


FROZEN_KEY_OF_UUID_1 = chat_lock_key(UUID(int=1))


# --- the sweep leader ------------------------------------------------------------------------


@pytest.fixture(params=["process", "file", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_leader(request: pytest.FixtureRequest, tmp_path: Path):
    engines = []
    process_local = ProcessLocalSweepLeaderLock()

    def make():
        if request.param == "process":
            return process_local
        if request.param == "file":
            return FileSweepLeaderLock(tmp_path / "locks")
        engine = create_database_engine(request.getfixturevalue("postgres_url"))
        engines.append(engine)
        return PostgresAdvisorySweepLeaderLock(engine)

    yield make
    for engine in engines:
        engine.dispose()


def test_one_leader_at_a_time(make_leader) -> None:
    first, second = make_leader(), make_leader()
    with first.try_lead() as leading:
        assert leading is True
        with second.try_lead() as also:
            assert also is False
    with second.try_lead() as leading:
        assert leading is True


@CROSS
def test_leadership_held_by_another_process_passes_on_when_it_dies(
    locker_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if locker_kind == "file":
        scope = str(tmp_path / "locks")
        leader: FileSweepLeaderLock | PostgresAdvisorySweepLeaderLock = FileSweepLeaderLock(
            tmp_path / "locks"
        )
    else:
        scope = str(request.getfixturevalue("postgres_url"))
        leader = PostgresAdvisorySweepLeaderLock(create_database_engine(scope))
    with holder_process(locker_kind, scope, "leader") as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with leader.try_lead() as leading:
            assert leading is False
        holder.kill()
        holder.wait(10)
    deadline = time.monotonic() + 10
    while True:  # the server notices the dead client's socket a moment later
        with leader.try_lead() as leading:
            if leading:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
