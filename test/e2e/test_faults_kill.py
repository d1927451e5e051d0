"""kill -9 of the service while it creates sandboxes: after a restart nothing has leaked (no
container without a live record) and no record is orphaned (none points at a missing
container), and every chat whose create was answered still has its sandbox.

A create starts the container before it commits the record, so a kill between the two leaves a
container no record knows: reconciliation (at start and on every sweep) removes it. The kill
comes while several creates are in flight; the test repeats it (up to ROUNDS times) until one
such container was actually left behind, so the removal is seen to happen, not assumed.
The same for microVMs: test/integration/qemu/test_service_qemu.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import docker
import httpx
import pytest

from testkit.service import API_KEY, ServiceProcess

pytestmark = [pytest.mark.docker]

CALLERS = 6
ROUNDS = 4


class _Creates:
    """Closed-loop callers, each creating sandboxes for new chats until stopped."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url
        self._stop = threading.Event()
        self.answered: dict[uuid.UUID, str] = {}  # chat -> container id, of 200 answers
        self.asked: list[uuid.UUID] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._caller, daemon=True) for _ in range(CALLERS)]

    def __enter__(self) -> _Creates:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _caller(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=self._base_url, headers=headers, timeout=60) as client:
            while not self._stop.is_set():
                chat = uuid.uuid4()
                with self._lock:
                    self.asked.append(chat)
                try:
                    response = client.put(f"/v1/chats/{chat}/sandbox")
                except httpx.TransportError:
                    continue  # the service was killed under this request
                if response.status_code == 200:
                    with self._lock:
                        self.answered[chat] = response.json()["container_id"]


def _records(data_dir: Path) -> dict[str, tuple[str, str]]:
    """container id -> (chat id, status), read from the store while the service is down."""
    with sqlite3.connect(f"file:{data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT container_id, chat_id, status FROM sandbox_sessions").fetchall()
    return {container: (str(uuid.UUID(chat)), status) for container, chat, status in rows}


def _container_ids(service: ServiceProcess, client: docker.DockerClient) -> set[str]:
    return {container.id for container in service.containers(client)}  # type: ignore[attr-defined]


def test_kill_9_during_creates_leaks_nothing(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    service = ServiceProcess(tmp_path, cleanup_interval_seconds="1", max_sandboxes="500")
    answered: dict[uuid.UUID, str] = {}
    left_behind: set[str] = set()
    try:
        for _ in range(ROUNDS):
            service.start()
            with _Creates(service.http_url) as creates:
                deadline = time.monotonic() + 120
                while len(creates.answered) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                service.kill()  # mid-create for the callers still waiting
            answered.update(creates.answered)
            left_behind = _container_ids(service, docker_client) - set(_records(tmp_path))
            if left_behind:
                break
        assert left_behind, f"no kill in {ROUNDS} rounds came between a container and its record"
        service.start()
        time.sleep(2.5)  # the start-up reconciliation, and a sweep or two after it
        alive = service.process is not None and service.process.poll() is None
        service.stop()  # the records are read from the file with the service down
        containers = _container_ids(service, docker_client)
        running = {
            c.id  # type: ignore[attr-defined]
            for c in service.containers(docker_client)
            if c.status == "running"  # type: ignore[attr-defined]
        }
        records = _records(tmp_path)
    finally:
        service.stop()
        service.remove_sandboxes(docker_client)

    assert alive, service.log_tail()
    assert not left_behind & containers  # the orphans were removed
    # Every container has its live record and every record its running container.
    assert containers == running == set(records)
    assert {status for _, status in records.values()} <= {"running"}
    # Every create that was answered kept its sandbox.
    assert {str(chat): container for chat, container in answered.items()}.items() <= {
        chat: container for container, (chat, _) in records.items()
    }.items()
    assert '"event": "sandbox_orphan_removed"' in service.log_text()
