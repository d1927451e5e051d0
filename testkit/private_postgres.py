"""A PostgreSQL server owned by one test or benchmark, to stop and restart at will.

The system's server (127.0.0.1:5432) is shared by every test run on the machine: a fault test
must never restart it. This one is ``initdb`` in a temporary directory, started by ``pg_ctl`` on
a free loopback port, run as the ``postgres`` user when we are root (the server refuses root),
and torn down by its own data directory and postmaster pid, nothing else.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import sqlalchemy as sa

from testkit.service import free_port

SERVER_USER = "postgres"


def postgres_bindir() -> Path:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not found:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return found[-1].parent


class PrivatePostgres:
    """One server: ``start``, ``stop`` (``immediate`` by default: a crash, not a goodbye),
    ``restart``, ``database_url``; ``close`` stops it and removes its directory."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        # Outside pytest's tmp_path: that one is 0700 root, unreadable for the server's user.
        self.root = Path(tempfile.mkdtemp(prefix="sandboxd-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as_user, str(self.bindir / tool), *args],
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    def server_url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
            # Plenty of connections: a load test opens pools for several service processes.
            " -c max_connections=200"
        )
        log = str(self.root / "log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: every backend killed at once, recovery at the next start (as after a
        crash); ``fast``: a clean shutdown that disconnects the clients."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0, mode: str = "immediate") -> None:
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self._postmaster_pid() is not None

    def create_database(self, name: str) -> str:
        """A fresh database; its SQLAlchemy URL."""
        engine = sa.create_engine(
            self.server_url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool
        )
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        finally:
            engine.dispose()
        return self.server_url(name)

    def close(self) -> None:
        pid = self._postmaster_pid()
        if pid is not None:
            with suppress(subprocess.CalledProcessError):
                self.stop()
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()
