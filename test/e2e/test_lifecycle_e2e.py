"""Cleanup, reconciliation and restarts of a real ``sandboxd serve`` with Docker sandboxes."""

from __future__ import annotations

import time
import uuid

import docker
import pytest

from testkit.service import INSTANCE_LABEL, ServiceFactory, client_for

pytestmark = pytest.mark.docker


def _exists(docker_client: docker.DockerClient, container_id: str) -> bool:
    try:
        docker_client.containers.get(container_id)
    except docker.errors.NotFound:
        return False
    return True


def test_cleanup_removes_an_expired_chats_container(
    services: ServiceFactory, docker_client: docker.DockerClient
) -> None:
    service = services(ttl_seconds="2", cleanup_interval_seconds="0.5")
    chat = uuid.uuid4()
    with client_for(service) as client:
        container_id = client.execute(chat, "print('hi')").sandbox.container_id
        assert _exists(docker_client, container_id)

        deadline = time.monotonic() + 30
        while _exists(docker_client, container_id) and time.monotonic() < deadline:
            time.sleep(0.25)

        assert not _exists(docker_client, container_id)
        assert client.get_sandbox(chat) is None
    assert '"event": "sandbox_cleaned"' in service.log_text()


def test_a_restart_loses_no_session_and_leaks_no_container(
    services: ServiceFactory, docker_client: docker.DockerClient
) -> None:
    service = services()
    chat = uuid.uuid4()
    with client_for(service) as client:
        before = client.execute(chat, "kept = 'across the restart'")

    assert service.stop() == 0
    # Shutdown leaves sandboxes to their TTL: the chat's container still runs.
    assert docker_client.containers.get(before.sandbox.container_id).status == "running"
    # A container of this instance that no record knows (as after a crash mid-create).
    image = docker_client.containers.get(before.sandbox.container_id).image
    assert image is not None
    orphan = docker_client.containers.run(
        image,
        ["python3", "-c", "import time; time.sleep(600)"],
        detach=True,
        network_mode="none",
        labels={
            INSTANCE_LABEL: service.instance_id,
            "sandboxd.chat_id": str(uuid.uuid4()),
            "sandboxd.session_id": str(uuid.uuid4()),
        },
    )

    service.start()
    with client_for(service) as client:
        after = client.execute(chat, "print(kept)")

    assert after.stdout == "across the restart\n"
    assert after.sandbox_replaced is False
    assert after.sandbox.session_id == before.sandbox.session_id
    assert orphan.id is not None
    assert not _exists(docker_client, orphan.id)
    remaining = {container.id for container in service.containers(docker_client)}  # type: ignore[attr-defined]
    assert remaining == {before.sandbox.container_id}


def test_a_sandbox_that_vanished_while_the_service_was_down_is_replaced(
    services: ServiceFactory, docker_client: docker.DockerClient
) -> None:
    service = services()
    chat = uuid.uuid4()
    with client_for(service) as client:
        before = client.execute(chat, "gone = True")
    service.stop()
    docker_client.containers.get(before.sandbox.container_id).remove(force=True)

    service.start()
    with client_for(service) as client:
        marked = client.get_sandbox(chat)
        after = client.execute(chat, "print('gone' in globals())")

    assert marked is not None and marked.status == "dead"
    assert after.sandbox_replaced is True
    assert after.stdout == "False\n"
