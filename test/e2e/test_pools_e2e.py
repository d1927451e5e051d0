"""Warm pools in the real service process: the settings' default pool fills, a new chat gets a
pooled sandbox, the API reports it, and members of a service killed with -9 are removed when it
starts again."""

from __future__ import annotations

import time
import uuid

import docker
import httpx

from testkit.service import API_KEY, ServiceFactory, ServiceProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def pool_status(service: ServiceProcess, name: str = "default") -> dict[str, int]:
    response = httpx.get(f"{service.http_url}/v1/pools/{name}", headers=AUTH, timeout=30)
    response.raise_for_status()
    return dict(response.json()["status"])


def wait_available(service: ServiceProcess, count: int) -> None:
    # Polls the service's own status; the bound only fails a pool that never fills.
    for _ in range(600):
        if pool_status(service)["available"] >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the pool never held {count}:\n{service.log_tail()}")


def container_ids(service: ServiceProcess, client: docker.DockerClient) -> set[str]:
    return {container.id for container in service.containers(client)}  # type: ignore[attr-defined]


def test_pooled_sandboxes_serve_chats_and_do_not_outlive_a_killed_service(
    services: ServiceFactory, docker_client: docker.DockerClient
) -> None:
    service = services(pool_size="2")
    wait_available(service, 2)
    members = container_ids(service, docker_client)
    assert len(members) == 2

    chat = uuid.uuid4()
    response = httpx.post(
        f"{service.http_url}/v1/chats/{chat}/executions",
        json={"code": "print('pooled')"},
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    sandbox = httpx.get(f"{service.http_url}/v1/chats/{chat}/sandbox", headers=AUTH).json()
    assert sandbox["container_id"] in members
    assert pool_status(service)["allocated"] == 1
    wait_available(service, 2)
    metrics = httpx.get(f"{service.http_url}/metrics", headers=AUTH).text
    assert 'sandboxd_pool{measure="claims_from_pool",pool="default"} 1.0' in metrics

    idle_before_kill = container_ids(service, docker_client) - {sandbox["container_id"]}
    assert service.process is not None
    service.process.kill()  # kill -9: no drain, the idle members are left behind
    service.process.wait(timeout=30)
    assert idle_before_kill <= container_ids(service, docker_client)

    service.start()
    wait_available(service, 2)
    alive = container_ids(service, docker_client)
    assert not (idle_before_kill & alive), "idle members of the killed service survived"
    assert sandbox["container_id"] in alive  # the chat's sandbox is the chat's, kept
