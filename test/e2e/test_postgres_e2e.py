"""The service on PostgreSQL: schema check at start-up, two replicas sharing one database, and
one sweeper at a time (the advisory-lock leader)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from dependency_injector import providers

from entrypoint.container import Container
from entrypoint.settings import Settings
from testkit.pg import temporary_database
from testkit.service import ServiceProcess, client_for, migrate

pytestmark = [pytest.mark.docker, pytest.mark.postgres]


@pytest.fixture
def database_url() -> Iterator[str]:
    with temporary_database("sandboxd_e2e") as url:
        yield url


def test_the_service_refuses_a_database_that_was_not_migrated(
    database_url: str, tmp_path: Path
) -> None:
    service = ServiceProcess(tmp_path, database_url=database_url)

    with pytest.raises(RuntimeError, match="sandboxd migrate"):
        service.start()

    assert service.process is not None and service.process.returncode == 4


def test_two_replicas_share_the_chats(
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
) -> None:
    # Replicas on one host share the instance id and the data directory (the Docker runtime
    # talks only to sandboxes whose agent channel lies under its own data directory).
    shared = tmp_path_factory.mktemp("replicas")
    first = ServiceProcess(shared, database_url=database_url)
    second = ServiceProcess(shared, database_url=database_url)
    second.instance_id = first.instance_id
    migrate(first)
    try:
        first.start()
        second.start()
        chat = uuid.uuid4()
        with client_for(first) as a, client_for(second) as b:
            created = a.execute(chat, "shared = 'state'")
            seen = b.execute(chat, "print(shared)")
            sandboxes = b.list_sandboxes(status="running").items
    finally:
        first.stop()
        second.stop()
        first.remove_sandboxes(docker_client)

    assert seen.stdout == "state\n"
    assert seen.sandbox.session_id == created.sandbox.session_id
    assert [item.chat_id for item in sandboxes] == [str(chat)]


def test_only_one_replica_sweeps_at_a_time(database_url: str, tmp_path: Path) -> None:
    migrate(ServiceProcess(tmp_path, database_url=database_url))
    replicas = []
    for name in ("a", "b"):
        container = Container()
        settings = Settings(
            database_url=database_url, data_dir=tmp_path / name, instance_id=f"e2e-{uuid.uuid4()}"
        )
        container.settings.override(providers.Object(settings))
        replicas.append(container)
    leader = replicas[0].sweep_leader()

    with leader.try_lead() as leading:
        assert leading
        skipped = replicas[1].sweeper().run_once()
    swept = replicas[1].sweeper().run_once()

    assert skipped.leader is False
    assert swept.leader is True
