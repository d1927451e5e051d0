"""The data directory's disk full (SQLite store, the embedded default): callers get a clear,
stable error, nothing is corrupted, and once space is freed the service works again by itself.

The data directory is a small tmpfs of its own (testkit.small_disk), filled with a ballast file;
the service's log goes elsewhere, as a journal would.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from testkit.fault_load import Outcome, execute_once
from testkit.service import API_KEY, ServiceProcess
from testkit.small_disk import SmallDisk, small_disk

pytestmark = [pytest.mark.docker]

FULL_CODE = "storage_full"


@pytest.fixture
def disk() -> Iterator[SmallDisk]:
    try:
        with small_disk(size_mb=32) as mounted:
            yield mounted
    except PermissionError as exc:
        pytest.skip(str(exc))


def test_disk_full_data_directory(
    disk: SmallDisk, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    service = ServiceProcess(
        disk.path / "data", log_dir=tmp_path, renew_slack_fraction="0", cleanup_interval_seconds="1"
    )
    kept = [uuid.uuid4() for _ in range(2)]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        service.start()
        with httpx.Client(base_url=service.http_url, headers=headers, timeout=120) as client:
            for chat in kept:
                assert execute_once(client, chat).ok
            disk.fill()
            full: list[Outcome] = []
            # Existing chats (a record update per execute) and new ones (a record and a sandbox).
            for _ in range(5):
                full += [execute_once(client, chat) for chat in kept]
                full.append(execute_once(client, uuid.uuid4()))
            listed_full = client.get("/v1/sandboxes", params={"limit": 100})
            disk.free()
            time.sleep(1.5)  # a sweep: it may run again now
            after = [execute_once(client, chat) for chat in kept]
            fresh = uuid.uuid4()
            after.append(execute_once(client, fresh))
            listed = client.get("/v1/sandboxes", params={"limit": 100}).json()["items"]
        alive = service.process is not None and service.process.poll() is None
        containers = service.containers(docker_client)
        log = service.log_text()
    finally:
        service.stop()
        service.remove_sandboxes(docker_client)
    integrity = _integrity(disk.path / "data" / "sandboxd.db")

    failed = [o for o in full if not o.ok]
    assert failed, "the full disk refused nothing: the test did not fill it"
    assert {(o.status, o.code) for o in failed} == {(503, FULL_CODE)}, failed
    assert all(o.retry_after for o in failed)
    assert listed_full.status_code == 200  # reads still work
    assert alive, log[-3000:]
    assert integrity == "ok"
    assert all(o.ok for o in after), after
    # The kept chats kept their sandboxes and state throughout; the refused new chats left no
    # record and no sandbox behind.
    assert not any(o.replaced for o in after)
    assert sorted(item["chat_id"] for item in listed) == sorted(str(c) for c in [*kept, fresh])
    assert len(containers) == 3


def _integrity(database: Path) -> str:
    with sqlite3.connect(database) as connection:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])
