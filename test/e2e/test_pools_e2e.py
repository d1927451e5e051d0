"""Warm pools in the real service process: the settings' default pool fills, a new chat gets a
pooled sandbox, the API reports it, and members of a service killed with -9 are removed when it
starts again; a package pool made with an admin key serves a chat asking for its set."""

from __future__ import annotations

import time
import uuid

import docker
import httpx

from testkit.service import API_KEY, ServiceFactory, ServiceProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}


ADMIN_KEY = "e2e-admin-" + uuid.uuid4().hex
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def pool_status(service: ServiceProcess, name: str = "default") -> dict[str, int]:
    response = httpx.get(f"{service.http_url}/v1/pools/{name}", headers=AUTH, timeout=30)
    response.raise_for_status()
    return dict(response.json()["status"])


def wait_available(service: ServiceProcess, count: int, name: str = "default") -> None:
    # Polls the service's own status; the bound only fails a pool that never fills.
    for _ in range(1200):
        if pool_status(service, name)["available"] >= count:
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


def test_a_package_pool_made_by_an_admin_serves_its_set(
    services: ServiceFactory, docker_client: docker.DockerClient
) -> None:
    repository = f"sandboxd-env-e2e-{uuid.uuid4().hex[:10]}"
    service = services(env_image_repository=repository, admin_keys=ADMIN_KEY)
    pool = {
        "name": "tab",
        "environment": {"language": "python", "packages": ["tabulate==0.9.0"]},
        "capacitySpec": {"bufferMax": 1, "bufferMin": 1, "poolMax": 5, "poolMin": 0},
    }
    try:
        refused = httpx.post(f"{service.http_url}/v1/pools", json=pool, headers=AUTH, timeout=30)
        assert (refused.status_code, refused.json()["code"]) == (403, "admin_required")
        created = httpx.post(f"{service.http_url}/v1/pools", json=pool, headers=ADMIN, timeout=30)
        assert created.status_code == 201, created.text
        wait_available(service, 1, "tab")  # the environment is built, then its member started
        (member,) = container_ids(service, docker_client)

        chat = uuid.uuid4()
        response = httpx.post(
            f"{service.http_url}/v1/chats/{chat}/executions",
            json={
                "code": "import tabulate; print(tabulate.__version__)",
                "packages": ["tabulate==0.9.0"],
            },
            headers=AUTH,
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert response.json()["stdout"].strip() == "0.9.0"
        assert response.json()["session"]["container_id"] == member
        assert pool_status(service, "tab")["allocated"] == 1
    finally:
        service.remove_sandboxes(docker_client)
        for found in docker_client.images.list(name=repository):
            for tag in found.tags:
                docker_client.images.remove(tag, force=True)


def execute(service: ServiceProcess, chat: uuid.UUID) -> httpx.Response:
    return httpx.post(
        f"{service.http_url}/v1/chats/{chat}/executions",
        json={"code": "print('hi')"},
        headers=AUTH,
        timeout=60,
    )


def pool_metric(service: ServiceProcess, measure: str, name: str) -> float:
    metrics = httpx.get(f"{service.http_url}/metrics", headers=AUTH, timeout=30).text
    prefix = f'sandboxd_pool{{measure="{measure}",pool="{name}"}} '
    (line,) = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


def test_a_pool_larger_than_the_host_cap_stops_at_it_and_chats_are_still_served(
    services: ServiceFactory, docker_client: docker.DockerClient
) -> None:
    # The host takes 3 sandboxes; an admin asks for 5 idle ones. Pool members count against
    # the cap with the chats' sandboxes, and chats come first.
    service = services(max_sandboxes="3", admin_keys=ADMIN_KEY, pool_health_interval_seconds="1")

    def definition(size: int) -> dict[str, object]:
        return {
            "name": "big",
            "environment": {"language": "python", "packages": []},
            "capacitySpec": {"bufferMax": size, "bufferMin": size, "poolMax": 10, "poolMin": 0},
        }

    pool, absurd = definition(5), definition(100_000)
    try:
        refused = httpx.post(f"{service.http_url}/v1/pools", json=absurd, headers=ADMIN, timeout=30)
        assert refused.status_code == 422, refused.text
        created = httpx.post(f"{service.http_url}/v1/pools", json=pool, headers=ADMIN, timeout=30)
        assert created.status_code == 201, created.text
        wait_available(service, 3, "big")
        # Capped: the replenisher was refused a fourth member (and keeps being refused).
        for _ in range(600):
            if pool_metric(service, "replenish_capped", "big") >= 1:
                break
            time.sleep(0.1)
        assert pool_metric(service, "replenish_capped", "big") >= 1, service.log_tail()
        assert len(container_ids(service, docker_client)) == 3
        assert "pool_replenish_capped" in service.log_tail()

        # At the cap, new chats are served from the pool: nothing is started beyond 3.
        chats = [uuid.uuid4() for _ in range(3)]
        for chat in chats:
            response = execute(service, chat)
            assert response.status_code == 200, response.text
            assert len(container_ids(service, docker_client)) <= 3
        assert pool_status(service, "big")["available"] == 0
        assert len(container_ids(service, docker_client)) == 3

        # Three chats fill the host: a fourth is refused, not given a fourth sandbox.
        over = execute(service, uuid.uuid4())
        assert (over.status_code, over.json()["code"]) == (429, "sandbox_limit")

        # A chat ends: its room goes back to the pool at the next health round.
        deleted = httpx.delete(
            f"{service.http_url}/v1/chats/{chats[0]}/sandbox", headers=AUTH, timeout=30
        )
        assert deleted.status_code in (200, 204), deleted.text
        wait_available(service, 1, "big")
        assert len(container_ids(service, docker_client)) == 3
    finally:
        service.remove_sandboxes(docker_client)
