"""A throwaway PostgreSQL database per test session (or benchmark run).

The server comes from SANDBOXD_TEST_POSTGRES_URL (default: the sandboxd role on 127.0.0.1:5432,
which scripts/setup.sh creates). Only the database created here is ever dropped.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from repository import libpq

if TYPE_CHECKING:
    import pytest  # benchmarks import this module without pytest's cost

DEFAULT_SERVER_URL = "postgresql+psycopg://sandboxd:sandboxd@127.0.0.1:5432/"


def server_url() -> URL:
    return make_url(os.environ.get("SANDBOXD_TEST_POSTGRES_URL") or DEFAULT_SERVER_URL)


@contextmanager
def temporary_database(prefix: str = "sandboxd_test") -> Iterator[str]:
    """Create a database with a random name; yield its URL; drop it (and only it) at the end."""
    server = server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        server.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def record_driver_queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every query psycopg sends from now on (SQLAlchemy's, raw cursors' and the chat lock's
    libpq ones alike): one entry per round trip, for tests that count them."""
    queries: list[str] = []
    send = psycopg.Cursor.execute
    send_simple = libpq.first_row
    send_only = libpq.send

    def record(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        queries.append(str(query))
        return send(cursor, query, *args, **kwargs)

    def record_simple(driver: Any, sql: str) -> Any:
        queries.append(sql)
        return send_simple(driver, sql)

    monkeypatch.setattr(psycopg.Cursor, "execute", record)

    def record_sent(driver: Any, sql: str) -> None:
        queries.append(sql)
        send_only(driver, sql)

    monkeypatch.setattr(libpq, "first_row", record_simple)
    monkeypatch.setattr(libpq, "send", record_sent)
    return queries


def wait_until_backends_exit(pids: list[int], timeout_s: float = 10.0) -> None:
    """pg_terminate_backend only signals a backend: wait until its process is gone, so that its
    socket is closed and its client sees EOF. The test server runs on this host (/proc); the
    backend leaves pg_stat_activity before its process exits, so that is not enough."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while os.path.exists(f"/proc/{pid}"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL backend {pid} did not exit")
            time.sleep(0.005)
