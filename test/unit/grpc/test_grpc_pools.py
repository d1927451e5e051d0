"""PoolService over a live service (in-memory stores, scripted runtime)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from testkit.container import ADMIN_KEY, API_KEY, make_container
from testkit.live import live_service

AUTH = (("authorization", f"Bearer {API_KEY}"),)
ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)


@pytest.fixture
def stub() -> Iterator[Any]:
    container = make_container()
    with (
        live_service(container) as live,
        grpc.insecure_channel(live.grpc_target) as channel,
    ):
        yield pb_grpc.PoolServiceStub(channel)


def pool(name: str = "base", **spec: int) -> Any:
    capacity = {"buffer_max": 1, "buffer_min": 0, "pool_max": 3, "pool_min": 0} | spec
    return pb.Pool(
        name=name,
        environment=pb.PoolEnvironment(language="python"),
        capacity_spec=pb.CapacitySpec(**capacity),
    )


def failure(call: Any, *args: Any, metadata: Any = ADMIN) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(*args, metadata=metadata)
    trailing = dict(error.value.trailing_metadata() or ())
    return error.value.code(), trailing.get("sandboxd-error-code", "")


def test_pools_over_grpc(stub: Any) -> None:
    created = stub.CreatePool(pool(), metadata=ADMIN)
    assert (created.name, created.status.revision) == ("base", 1)
    updated = stub.UpdatePool(pool(buffer_max=2, pool_max=4), metadata=ADMIN)
    assert (updated.capacity_spec.buffer_max, updated.status.revision) == (2, 2)
    listed = stub.ListPools(pb.ListPoolsRequest(), metadata=AUTH)
    assert [item.name for item in listed.pools] == ["base"]
    assert stub.GetPool(pb.PoolRequest(name="base"), metadata=AUTH).capacity_spec.pool_max == 4
    stub.DeletePool(pb.PoolRequest(name="base"), metadata=ADMIN)
    assert failure(stub.GetPool, pb.PoolRequest(name="base")) == (
        grpc.StatusCode.NOT_FOUND,
        "pool_not_found",
    )


def test_pool_errors_over_grpc(stub: Any) -> None:
    assert failure(stub.ListPools, pb.ListPoolsRequest(), metadata=())[0] is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    stub.CreatePool(pool(), metadata=ADMIN)
    assert failure(stub.CreatePool, pool()) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "pool_already_exists",
    )
    invalid = (grpc.StatusCode.INVALID_ARGUMENT, "invalid_pool")
    assert failure(stub.CreatePool, pool("Bad_Name")) == invalid
    assert failure(stub.CreatePool, pool("neg", buffer_min=-1)) == invalid
    assert failure(stub.CreatePool, pool("inv", buffer_min=3, buffer_max=2)) == invalid


def test_a_tenant_key_cannot_change_pools_over_grpc(stub: Any) -> None:
    denied = (grpc.StatusCode.PERMISSION_DENIED, "admin_required")
    assert failure(stub.CreatePool, pool("greedy", buffer_max=50), metadata=AUTH) == denied
    stub.CreatePool(pool(), metadata=ADMIN)
    assert failure(stub.UpdatePool, pool(buffer_max=50, pool_max=99), metadata=AUTH) == denied
    assert failure(stub.DeletePool, pb.PoolRequest(name="base"), metadata=AUTH) == denied
    (kept,) = stub.ListPools(pb.ListPoolsRequest(), metadata=AUTH).pools
    assert (kept.name, kept.capacity_spec.buffer_max, kept.status.revision) == ("base", 1, 1)
