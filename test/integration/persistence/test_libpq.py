"""repository.libpq.first_row against a real PostgreSQL: what the chat lock relies on."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from uuid import UUID

import psycopg
import pytest

from repository.libpq import first_row, send, settle
from testkit.pg import wait_until_backends_exit

pytestmark = pytest.mark.postgres


@pytest.fixture
def connect(postgres_url: str) -> Iterator[object]:
    made: list[psycopg.Connection[tuple[object, ...]]] = []

    def open_one() -> psycopg.Connection[tuple[object, ...]]:
        dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
        made.append(psycopg.connect(dsn, autocommit=True))
        return made[-1]

    yield open_one
    for connection in made:
        connection.close()


def test_the_last_statement_s_first_row_comes_back_loaded_as_a_cursor_would(connect) -> None:
    driver = connect()
    row = first_row(
        driver,
        "SELECT 1; SELECT '6f1c1d5e-9a43-4d6a-8d0e-3c4b5a697887'::uuid, now(), 'x', 5::bigint,"
        " true, NULL::text FROM generate_series(1, 3)",
    )
    assert row is not None
    assert row[0] == UUID("6f1c1d5e-9a43-4d6a-8d0e-3c4b5a697887")
    assert isinstance(row[1], datetime) and row[1].tzinfo is not None
    assert row[2:] == ("x", 5, True, None)


def test_no_row_and_a_command_answer_none(connect) -> None:
    driver = connect()
    assert first_row(driver, "SELECT 1 WHERE false") is None
    assert first_row(driver, "SET application_name = 'sandboxd-test'") is None


def test_a_failed_statement_raises_the_error_a_cursor_raises(connect) -> None:
    holder, waiter = connect(), connect()
    first_row(holder, "SELECT pg_advisory_lock(424242)")
    with pytest.raises(psycopg.errors.LockNotAvailable):
        first_row(waiter, "SET lock_timeout = '50ms'; SELECT pg_advisory_lock(424242)")
    with pytest.raises(psycopg.errors.DivisionByZero):
        first_row(waiter, "SELECT 1 / 0")
    assert not waiter.broken
    assert first_row(waiter, "SELECT 2") == (2,)


def test_a_connection_that_died_raises_and_says_it_is_broken(connect) -> None:
    victim, killer = connect(), connect()
    killer.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
    wait_until_backends_exit([victim.info.backend_pid])
    with pytest.raises(psycopg.Error):
        first_row(victim, "SELECT 1")
    assert victim.broken


def test_other_threads_run_while_it_waits_for_the_server(connect) -> None:
    driver = connect()
    spins = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal spins
        while not stop.is_set():
            spins += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        time.sleep(0.05)
        before = spins
        first_row(driver, "SELECT pg_sleep(0.3)")
        during = spins - before
    finally:
        stop.set()
        spinner.join()
    # Holding the GIL through the wait would leave the spinner at (nearly) nothing.
    assert during > 10_000


def test_a_sent_query_s_answer_is_read_later_and_its_failure_raised_then(connect) -> None:
    driver = connect()
    send(driver, "SELECT pg_advisory_unlock(777)")  # not held: answers false, with a warning
    settle(driver)
    assert first_row(driver, "SELECT 3") == (3,)
    send(driver, "SELECT 1 / 0")
    with pytest.raises(psycopg.errors.DivisionByZero):
        settle(driver)
    assert first_row(driver, "SELECT 4") == (4,)


def test_settling_a_connection_that_died_raises(connect) -> None:
    victim, killer = connect(), connect()
    send(victim, "SELECT 1")
    killer.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
    wait_until_backends_exit([victim.info.backend_pid])
    with pytest.raises(psycopg.Error):
        settle(victim)


def test_a_socket_numbered_past_select_s_limit_still_works(connect) -> None:
    # The service holds a socket per sandbox: its lock connections' numbers pass 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.fail(f"this test needs RLIMIT_NOFILE >= 1200, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < 1030:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
        driver = connect()
        assert driver.pgconn.socket > 1024
        send(driver, "SELECT pg_sleep(0.05)")
        settle(driver)
        assert first_row(driver, "SELECT 5") == (5,)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
