"""One parameterless query on a psycopg connection through libpq's PQexec, for the chat lock's
statements, which run twice per execute.

A psycopg cursor costs about 50 us of Python per statement (cursor set-up, the prepare
bookkeeping, result selection) around a round trip that libpq does in C with the GIL released;
PQexec does the whole round trip there, and only the row that is wanted is converted, by
psycopg's own loaders. The SQL must carry no parameters (its values are inlined by the caller,
which only inlines integers and canonical UUID text), and may hold several statements: PQexec
runs them in one simple-protocol round trip and answers with the last one's result.

``send`` and ``settle`` split a round trip: the query leaves now and its answer is read later
(by then it has usually arrived), for a statement whose outcome the caller need not wait for.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Transformer

_ROWS = pq.ExecStatus.TUPLES_OK
_DONE = pq.ExecStatus.COMMAND_OK


def first_row(driver: psycopg.Connection[Any], sql: str) -> tuple[Any, ...] | None:
    """The first row of the last statement's result (None when it has none), loaded as a cursor
    would; a failed statement raises the psycopg error a cursor would raise (the connection's
    ``broken`` then says whether it was the connection that failed)."""
    result = driver.pgconn.exec_(sql.encode())
    status = result.status
    if status == _ROWS:
        if result.ntuples == 0:
            return None
        loader = Transformer(driver)
        loader.set_pgresult(result)
        row: tuple[Any, ...] = loader.load_row(0, tuple)
        return row
    if status == _DONE:
        return None
    raise psycopg.errors.error_from_result(result, encoding=driver.info.encoding)


def send(driver: psycopg.Connection[Any], sql: str) -> None:
    """Send a parameterless query and return without waiting for its answer; ``settle`` reads it
    before the connection runs anything else. (psycopg keeps libpq non-blocking: the query is
    flushed here, waiting, GIL released, only while the socket's buffer is full.)"""
    pgconn = driver.pgconn
    pgconn.send_query(sql.encode())
    while pgconn.flush():
        _wait(pgconn.socket, select.POLLOUT)


def settle(driver: psycopg.Connection[Any]) -> None:
    """Read the answer of what ``send`` sent (waiting for it, GIL released, if it has not come);
    a failed statement raises its psycopg error, a dead connection too."""
    pgconn = driver.pgconn
    error: psycopg.Error | None = None
    while True:
        pgconn.consume_input()
        while pgconn.is_busy():
            _wait(pgconn.socket, select.POLLIN)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if result.status not in (_ROWS, _DONE) and error is None:
            error = psycopg.errors.error_from_result(result, encoding=driver.info.encoding)
    if error is not None:
        raise error
    if pgconn.status == pq.ConnStatus.BAD:
        raise psycopg.OperationalError("the connection was closed after its last answer")


def _wait(fd: int, events: int) -> None:
    """Until the socket is ready (or failed: then libpq's next call says how), GIL released.
    poll, not select: the service holds a socket per sandbox, so this one's number may well be
    past select's limit of 1024."""
    poller = select.poll()
    poller.register(fd, events)
    poller.poll()
