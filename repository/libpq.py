"""One parameterless query on a psycopg connection through libpq's PQexec, for the chat lock's
statements, which run twice per execute.

A psycopg cursor costs about 50 us of Python per statement (cursor set-up, the prepare
bookkeeping, result selection) around a round trip that libpq does in C with the GIL released;
PQexec does the whole round trip there, and only the row that is wanted is converted, by
psycopg's own loaders. The SQL must carry no parameters (its values are inlined by the caller,
which only inlines integers and canonical UUID text), and may hold several statements: PQexec
runs them in one simple-protocol round trip and answers with the last one's result.
"""

from __future__ import annotations

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
