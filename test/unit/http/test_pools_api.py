from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from entrypoint.container import Container
from testkit.container import ADMIN_AUTH, AUTH, make_container
from testkit.fakes import FakeRuntime
from testkit.live import live_service


def body(name: str = "base", **capacity: int) -> dict[str, object]:
    spec = {"bufferMax": 2, "bufferMin": 1, "poolMax": 5, "poolMin": 0} | capacity
    return {
        "name": name,
        "environment": {"language": "python", "packages": []},
        "capacitySpec": spec,
    }


@pytest.fixture
def pools_client(container: Container) -> Iterator[TestClient]:
    with TestClient(container.http_app(), raise_server_exceptions=False) as client:
        yield client
    container.warm_pools().close(wait_s=5)
    container.api().close()


def test_create_get_list_update_delete(pools_client: TestClient, runtime: FakeRuntime) -> None:
    created = pools_client.post("/v1/pools", json=body(), headers=ADMIN_AUTH)
    assert created.status_code == 201, created.text
    assert created.json()["capacitySpec"] == {
        "bufferMax": 2,
        "bufferMin": 1,
        "poolMax": 5,
        "poolMin": 0,
    }
    assert created.json()["status"]["revision"] == 1

    got = pools_client.get("/v1/pools/base", headers=AUTH)
    assert got.status_code == 200
    assert set(got.json()["status"]) == {"total", "allocated", "available", "revision"}
    listed = pools_client.get("/v1/pools", headers=AUTH).json()["items"]
    assert [item["name"] for item in listed] == ["base"]

    updated = pools_client.put(
        "/v1/pools/base",
        json={"capacitySpec": {"bufferMax": 3, "bufferMin": 2, "poolMax": 6, "poolMin": 1}},
        headers=ADMIN_AUTH,
    )
    assert updated.status_code == 200
    assert updated.json()["status"]["revision"] == 2
    assert updated.json()["capacitySpec"]["bufferMax"] == 3

    deleted = pools_client.delete("/v1/pools/base", headers=ADMIN_AUTH)
    assert deleted.status_code == 204
    assert pools_client.get("/v1/pools/base", headers=AUTH).json()["code"] == "pool_not_found"


def test_errors_have_stable_codes(pools_client: TestClient) -> None:
    assert pools_client.get("/v1/pools").status_code == 401
    assert pools_client.post("/v1/pools", json=body()).status_code == 401
    missing = pools_client.get("/v1/pools/nope", headers=AUTH)
    assert (missing.status_code, missing.json()["code"]) == (404, "pool_not_found")
    assert pools_client.delete("/v1/pools/nope", headers=ADMIN_AUTH).status_code == 404
    assert pools_client.post("/v1/pools", json=body(), headers=ADMIN_AUTH).status_code == 201
    taken = pools_client.post("/v1/pools", json=body(), headers=ADMIN_AUTH)
    assert (taken.status_code, taken.json()["code"]) == (409, "pool_already_exists")


def test_a_tenant_key_cannot_create_resize_or_delete_pools(
    pools_client: TestClient, container: Container, runtime: FakeRuntime
) -> None:
    refused = pools_client.post("/v1/pools", json=body("greedy", bufferMax=50), headers=AUTH)
    assert (refused.status_code, refused.json()["code"]) == (403, "admin_required")
    assert pools_client.get("/v1/pools", headers=ADMIN_AUTH).json()["items"] == []
    assert container.warm_pools().pools() == [] and runtime.create_calls == []

    assert pools_client.post("/v1/pools", json=body(), headers=ADMIN_AUTH).status_code == 201
    resize = {"capacitySpec": {"bufferMax": 50, "bufferMin": 50, "poolMax": 99, "poolMin": 0}}
    for response in (
        pools_client.put("/v1/pools/base", json=resize, headers=AUTH),
        pools_client.delete("/v1/pools/base", headers=AUTH),
        pools_client.delete("/v1/pools/nope", headers=AUTH),  # 403 before any look-up
    ):
        assert (response.status_code, response.json()["code"]) == (403, "admin_required")
    # Reading stays open to every key: definitions and counts, no tenant's data.
    kept = pools_client.get("/v1/pools/base", headers=AUTH).json()
    assert kept["capacitySpec"]["bufferMax"] == 2 and kept["status"]["revision"] == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x", "environment": {"language": "python", "packages": []}},
        body("Not_A_Label"),
        body("-bad"),
        body(bufferMin=-1),
        body(poolMax=-3),
        body(bufferMin=3, bufferMax=2),
        body(poolMin=6, poolMax=5),
        # Absurd sizes: each count that starts members is at most 1000.
        body(bufferMin=100_000, bufferMax=100_000, poolMax=100_000),
        body(bufferMax=1001, poolMax=2000),
        body(poolMin=1001, poolMax=2000),
    ],
)
def test_invalid_definitions_are_422(pools_client: TestClient, payload: dict) -> None:
    response = pools_client.post("/v1/pools", json=payload, headers=ADMIN_AUTH)
    assert response.status_code == 422, response.text
    assert pools_client.get("/v1/pools", headers=AUTH).json()["items"] == []


def test_a_created_pool_fills_and_serves_a_new_chat(
    pools_client: TestClient, container: Container, runtime: FakeRuntime
) -> None:
    pools_client.post("/v1/pools", json=body(bufferMax=2, bufferMin=2), headers=ADMIN_AUTH)
    pool = container.warm_pools().get("base")
    assert pool is not None
    pool.fill()
    members = list(runtime.create_calls)
    chat = uuid.uuid4()

    response = pools_client.post(
        f"/v1/chats/{chat}/executions", json={"code": "hello"}, headers=AUTH
    )

    assert response.status_code == 200, response.text
    session = container.repository().get_active_by_chat_id(chat)
    assert session is not None and session.session_id in members
    status = pools_client.get("/v1/pools/base", headers=AUTH).json()["status"]
    assert status["allocated"] == 1


def test_no_pool_is_configured_by_default(runtime: FakeRuntime) -> None:
    container = make_container(runtime)
    with live_service(container):
        assert container.warm_pools().pools() == []
    assert runtime.create_calls == []


def test_the_settings_pool_starts_with_the_service_and_is_drained_on_stop(
    runtime: FakeRuntime,
) -> None:
    container = make_container(runtime, pool_size=2)
    with live_service(container) as live:
        pool = container.warm_pools().get("default")
        assert pool is not None
        pool.fill()
        idle = set(runtime.alive)
        assert len(idle) == 2
        live.stop()
    assert idle <= set(runtime.stopped)
    assert runtime.alive == {}


def test_the_settings_pool_ratio_is_taken_of_the_hosts_sandbox_cap(runtime: FakeRuntime) -> None:
    container = make_container(runtime, pool_ratio=0.5, max_sandboxes=4)
    with live_service(container):
        pool = container.warm_pools().get("default")
        assert pool is not None
        pool.fill()
        assert len(runtime.alive) == 2  # max(1, int(4 x 0.5))


def test_the_clients_manage_pools() -> None:
    import asyncio

    from sandboxd_client import AsyncSandboxdClient, SandboxdClient, SandboxdError

    from testkit.container import ADMIN_KEY

    with (
        live_service(make_container()) as live,
        SandboxdClient(live.http_url, api_key=ADMIN_KEY) as client,
    ):
        created = client.create_pool(
            "np", buffer_min=0, buffer_max=1, pool_max=3, packages=["numpy"]
        )
        updated = client.update_pool("np", buffer_min=0, buffer_max=2, pool_max=4)
        listed = client.list_pools()

        async def via_async() -> tuple[int, list[str]]:
            async with AsyncSandboxdClient(live.http_url, api_key=ADMIN_KEY) as aclient:
                got = await aclient.get_pool("np")
                await aclient.delete_pool("np")
                return got.revision, [pool.name for pool in await aclient.list_pools()]

        revision, after_delete = asyncio.run(via_async())
        with pytest.raises(SandboxdError) as missing:
            client.get_pool("np")

    assert created.packages == ("numpy",) and created.revision == 1
    assert (updated.buffer_max, updated.pool_max, updated.revision) == (2, 4, 2)
    assert [pool.name for pool in listed] == ["np"]
    assert revision == 2 and after_delete == []
    assert (missing.value.status, missing.value.code) == (404, "pool_not_found")
