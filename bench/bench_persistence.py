"""Persistence benchmark: prints one JSON document.

    uv run python -m bench.bench_persistence [--iterations 2000] [--rows 100000]

On PostgreSQL (a throwaway database on SANDBOXD_TEST_POSTGRES_URL's server, default the sandboxd
role on 127.0.0.1:5432; dropped at the end) and, for comparison, on a SQLite file in a temp dir:
- save+get: one upsert then one read by id (two transactions), per new session;
- lock+unlock: take and release an uncontended chat lock (advisory lock / lock file);
- list_expired over ``--rows`` current records of which 1% are expired: wall time of the call
  (median of 20) and the plan of its statement, which should name the expiry index.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from domain.sandbox import SandboxSession, SandboxStatus
from repository.database import create_database_engine, migrate
from repository.file_lock import FileSandboxLifecycleLocker
from repository.postgres_lock import PostgresAdvisorySandboxLifecycleLocker, lock_pool_options
from repository.sqlalchemy_session import (
    EXPIRY_INDEX,
    SqlAlchemySandboxSessionRepository,
    sandbox_sessions,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@contextmanager
def postgres_database() -> Iterator[str]:
    server = make_url(
        os.environ.get("SANDBOXD_TEST_POSTGRES_URL")
        or "postgresql+psycopg://sandboxd:sandboxd@127.0.0.1:5432/"
    )
    name = f"sandboxd_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        server.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
    )
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def summary(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
    }


def timed(action: Callable[[], object], iterations: int) -> list[float]:
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def new_session(offset_s: float = 900.0) -> SandboxSession:
    return SandboxSession(
        session_id=uuid.uuid4(),
        chat_id=uuid.uuid4(),
        container_id="bench",
        status=SandboxStatus.RUNNING,
        created_at=T0,
        expires_at=T0 + timedelta(seconds=offset_s),
        runtime_kind="docker",
    )


def bench_save_get(repository: SqlAlchemySandboxSessionRepository, iterations: int) -> dict:
    def save_get() -> None:
        record = new_session()
        repository.save(record)
        assert repository.get(record.session_id) == record

    timed(save_get, 50)  # warm the pool and statement caches
    return summary(timed(save_get, iterations))


def bench_lock(locker, iterations: int) -> dict:
    chats = [uuid.uuid4() for _ in range(64)]
    counter = iter(range(10**9))

    def lock_unlock() -> None:
        with locker.lock(chats[next(counter) % len(chats)]):
            pass

    timed(lock_unlock, 50)
    return summary(timed(lock_unlock, iterations))


def bench_list_expired(engine: Engine, rows: int) -> dict:
    with engine.begin() as connection:
        connection.execute(sa.delete(sandbox_sessions))
    batch = []
    with engine.begin() as connection:
        for n in range(rows):
            batch.append(
                {
                    "session_id": uuid.uuid4(),
                    "chat_id": uuid.uuid4(),
                    "runtime_kind": "docker",
                    "container_id": "bench",
                    "status": "dead" if n % 10 == 0 else "running",
                    "created_at": T0,
                    "expires_at": T0 + timedelta(seconds=n),
                }
            )
            if len(batch) == 10_000:
                connection.execute(sa.insert(sandbox_sessions), batch)
                batch = []
        if batch:
            connection.execute(sa.insert(sandbox_sessions), batch)
    with engine.connect() as connection:
        connection.exec_driver_sql("ANALYZE")
        connection.commit()
    repository = SqlAlchemySandboxSessionRepository(engine)
    now = T0 + timedelta(seconds=rows // 100 - 1)  # 1% expired
    expired = repository.list_expired(now)
    assert len(expired) == rows // 100
    samples = timed(lambda: repository.list_expired(now), 20)
    statement = repository.list_expired_query(now).compile(
        dialect=engine.dialect, compile_kwargs={"literal_binds": True}
    )
    prefix = "EXPLAIN" if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
    with engine.connect() as connection:
        plan = [
            " ".join(str(column) for column in row)
            for row in connection.exec_driver_sql(f"{prefix} {statement}").all()
        ]
    return {
        "rows": rows,
        "expired_returned": len(expired),
        **summary(samples),
        "uses_expiry_index": any(EXPIRY_INDEX in line for line in plan),
        "plan": plan,
    }


def bench_backend(engine: Engine, locker, iterations: int, rows: int) -> dict:
    migrate(engine)
    repository = SqlAlchemySandboxSessionRepository(engine)
    return {
        "save_get": bench_save_get(repository, iterations),
        "lock_unlock": bench_lock(locker, iterations),
        "list_expired": bench_list_expired(engine, rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    result: dict = {"iterations": args.iterations}
    with postgres_database() as url:
        engine = create_database_engine(url)
        lock_engine = create_database_engine(url, lock_pool_options())
        try:
            result["postgresql"] = bench_backend(
                engine,
                PostgresAdvisorySandboxLifecycleLocker(lock_engine, unlock_without_waiting=True),
                args.iterations,
                args.rows,
            )
        finally:
            engine.dispose()
            lock_engine.dispose()
    with tempfile.TemporaryDirectory() as directory:
        engine = create_database_engine(f"sqlite:///{directory}/sandboxd.db")
        try:
            result["sqlite"] = bench_backend(
                engine,
                FileSandboxLifecycleLocker(Path(directory) / "locks"),
                args.iterations,
                args.rows,
            )
        finally:
            engine.dispose()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
