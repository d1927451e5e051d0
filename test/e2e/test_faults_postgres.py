"""PostgreSQL restarted under a load of executes: the service answers 503 with a stable code
while the database is down, recovers by itself (no service restart), and loses no record.

The server is a private one (testkit.private_postgres), never the machine's shared PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from testkit.fault_load import ExecuteLoad, Outcome, each_served, execute_once
from testkit.private_postgres import PrivatePostgres, private_postgres
from testkit.service import API_KEY, ServiceProcess, migrate

pytestmark = [pytest.mark.docker, pytest.mark.postgres]

CHATS = 4
# What a caller may see while the database is down: the database's own code, or (an execution
# that held its chat's advisory lock when the server went away) the lost lock. Both are 503s
# with Retry-After, and both mean "retry".
DOWN_CODES = {"database_unavailable", "lock_lost"}


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


def _client() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def test_postgres_restart_under_load(
    postgres: PrivatePostgres, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    url = postgres.create_database("sandboxd_faults")
    # Every execute writes its record (no renewal slack): the outage hits writes too.
    service = ServiceProcess(
        tmp_path, database_url=url, renew_slack_fraction="0", cleanup_interval_seconds="1"
    )
    migrate(service)
    chats = [uuid.uuid4() for _ in range(CHATS)]
    try:
        service.start()
        pid = service.process.pid if service.process else None
        with ExecuteLoad(service.http_url, API_KEY, chats) as load:
            load.wait_until(
                lambda seen: each_served(seen, chats, after=0, times=3),
                120,
                "three executes per chat before the outage",
            )
            before = {o.chat: o.session_id for o in load.outcomes if o.ok}
            postgres.stop()
            down_at = time.monotonic()
            load.wait_until(
                lambda seen: sum(o.status == 503 for o in seen if o.at > down_at) >= 2 * CHATS,
                60,
                "503s while the database is down",
            )
            with httpx.Client(base_url=service.http_url, headers=_client(), timeout=60) as client:
                # A new chat while the database is down gets the same answer, and no sandbox.
                refused = execute_once(client, uuid.uuid4())
                time.sleep(1.5)  # past the readiness cache
                ready_down = _readiness(client)
            postgres.start()
            up_at = time.monotonic()
            load.wait_until(
                lambda seen: each_served(seen, chats, after=up_at),
                60,
                "every chat served again after the restart",
            )
            time.sleep(0.5)
        outcomes = load.outcomes
        with httpx.Client(base_url=service.http_url, headers=_client(), timeout=60) as client:
            listed = client.get("/v1/sandboxes", params={"limit": 100}).json()["items"]
            # Readiness is cached for a second and its probe may have begun in the outage: it
            # must turn ready by itself within a few probes, not necessarily on the first.
            ready_up = _readiness(client, until_ready_s=10)
        still_same_process = service.process is not None and service.process.poll() is None
        same_pid = service.process is not None and service.process.pid == pid
        time.sleep(2.5)  # a sweep or two: reconciliation after the outage
        containers = service.containers(docker_client)
    finally:
        service.stop()
        service.remove_sandboxes(docker_client)

    down = [o for o in outcomes if o.at > down_at and o.at < up_at]
    _assert_only_ok_or_unavailable(outcomes)
    assert down and all(o.status == 503 for o in down if not o.ok), down
    assert {o.code for o in down if not o.ok} <= DOWN_CODES
    assert all(o.retry_after for o in down if not o.ok)
    assert refused.status == 503 and refused.code == "database_unavailable", refused
    assert ready_down[0] == 503 and ready_down[1]["checks"]["database"] != "ok", ready_down
    assert ready_up[0] == 200, ready_up
    assert still_same_process and same_pid and service.starts == 1
    # No record lost, no sandbox replaced: every chat kept its session and its interpreter.
    assert sorted(item["chat_id"] for item in listed) == sorted(str(c) for c in chats)
    for chat in chats:
        served = [o for o in outcomes if o.chat == chat and o.ok]
        assert {o.session_id for o in served} == {before[chat]}
        assert not any(o.replaced or o.state_lost for o in served)
        values = [o.value or 0 for o in served]
        # Climbing, never restarting: an execute answered 503 may have run (its counter step
        # is then skipped), none ran twice.
        assert values == sorted(set(values)), values
    assert len(containers) == CHATS


def _readiness(client: httpx.Client, until_ready_s: float = 0) -> tuple[int, dict[str, Any]]:
    """/readyz's status and body; polled until 200 for up to ``until_ready_s``."""
    deadline = time.monotonic() + until_ready_s
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() >= deadline:
            return response.status_code, response.json()
        time.sleep(0.25)


def _assert_only_ok_or_unavailable(outcomes: list[Outcome]) -> None:
    unexpected = [o for o in outcomes if o.status not in (200, 503)]
    assert not unexpected, unexpected[:5]
