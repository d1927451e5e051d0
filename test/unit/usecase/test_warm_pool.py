from __future__ import annotations

import threading
from uuid import uuid4

import pytest

from domain.errors import InvalidPoolError, RuntimeUnavailableError
from domain.execution import ExecutionRequest
from domain.pool import PoolCapacity, PoolDefinition, pool_size_for
from testkit.fakes import FakeEnvironmentRuntime, FakeEnvironmentStore
from testkit.world import CHAT, OTHER_CHAT, TTL, World
from usecase.environment import EnvironmentProvisioning
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.pool import WarmPool, WarmPools
from usecase.pool_replenish import replenish_parallelism
from usecase.reconcile import ReconcileSandboxes
from usecase.sandbox import CreateSandbox, CreateSandboxCommand


def definition(size: int = 2, name: str = "base", packages: tuple[str, ...] = ()) -> PoolDefinition:
    return PoolDefinition(name, "python", packages, PoolCapacity.fixed(size))


class Probe:
    def __init__(self) -> None:
        self.frozen: set[str] = set()
        self.pinged: list[str] = []

    def ping(self, container_id: str, timeout_s: float) -> bool:
        self.pinged.append(container_id)
        return container_id not in self.frozen


def pools_for(world: World, *definitions: PoolDefinition, probe: Probe | None = None) -> WarmPools:
    pools = WarmPools(world.runtime, world.repository, world.clock, world.logger, probe)
    pools.apply(definitions)
    wait_filled(pools)
    return pools


def wait_filled(pools: WarmPools) -> None:
    for pool in pools.pools():
        pool.fill()


def create(world: World, pools: WarmPools | None, chat=CHAT):
    return CreateSandbox(
        world.repository, world.locker, world.runtime, world.clock, world.logger, TTL, warm=pools
    ).execute(CreateSandboxCommand(chat))


def test_a_new_chat_claims_an_idle_member_that_becomes_its_sandbox(world: World) -> None:
    pools = pools_for(world, definition(2))
    pool = pools.get("base")
    assert pool is not None
    idle_before = pool.status().available
    creates_before = len(world.runtime.create_calls)

    session = create(world, pools)

    assert idle_before == 2
    assert session.chat_id == CHAT
    assert session.session_id in world.runtime.create_calls[:creates_before]
    assert world.repository.get_active_by_chat_id(CHAT) == session
    assert world.logger.named("sandbox_created")[-1]["pooled"] is True
    assert not pools.owns(session.session_id)
    pools.close(wait_s=5)


def test_without_a_pool_creation_is_on_demand(world: World) -> None:
    pools = pools_for(world)
    session = create(world, pools)
    assert world.runtime.create_calls == [session.session_id]
    assert "pooled" not in world.logger.named("sandbox_created")[-1]
    assert pools.on_demand == 1


def test_a_package_set_without_a_pool_is_created_on_demand(world: World) -> None:
    pools = pools_for(world, definition(1, "base"))
    claimed = pools.claim(
        chat_id=CHAT,
        created_at=world.clock.now(),
        expires_at=world.clock.now(),
        packages=("numpy",),
    )
    assert claimed is None
    assert pools.on_demand == 1
    pools.close(wait_s=5)


def test_package_pools_are_not_run_without_package_environments(world: World) -> None:
    pools = pools_for(world, definition(1, "numpy", ("numpy",)))
    pools.apply([definition(1, "numpy", ("numpy",))])  # the next sync round logs nothing new
    assert pools.pools() == []
    assert world.runtime.create_calls == []
    assert world.logger.events().count("pool_environments_unsupported") == 1


def package_world(world: World) -> tuple[WarmPools, CreateSandbox, FakeEnvironmentRuntime]:
    store = FakeEnvironmentStore()
    env_runtime = FakeEnvironmentRuntime(world.runtime)
    environments = EnvironmentProvisioning(store, env_runtime)
    pools = WarmPools(
        world.runtime, world.repository, world.clock, world.logger, environments=environments
    )
    pools.apply([definition(2, "np", ("NumPy>=1.0", "pandas"))])
    wait_filled(pools)
    create_sandbox = world.create_sandbox(
        environments=environments,
        warm=pools,
    )
    return pools, create_sandbox, env_runtime


def test_a_package_pool_starts_members_from_the_environment_and_serves_that_set(
    world: World,
) -> None:
    pools, create_sandbox, env_runtime = package_world(world)
    pool = pools.get("np")
    assert pool is not None and pool.status().available == 2
    members = list(world.runtime.create_calls)
    assert len(env_runtime.created_from) == 2  # both from the environment's build

    # The same set, written another way (order, case, spacing), is served from the pool.
    session = create_sandbox.execute(CreateSandboxCommand(CHAT, ("pandas", "numpy >= 1.0")))

    assert session.session_id in members
    assert session.packages == ("numpy>=1.0", "pandas")
    assert world.repository.get_active_by_chat_id(CHAT) == session
    assert world.logger.named("sandbox_created")[-1]["pooled"] is True
    assert pool.counters.claimed == 1
    pools.close(wait_s=5)


def test_another_package_set_or_the_base_gets_no_package_member(world: World) -> None:
    pools, create_sandbox, _ = package_world(world)
    pool = pools.get("np")
    assert pool is not None
    members = set(world.runtime.create_calls)

    subset = create_sandbox.execute(CreateSandboxCommand(CHAT, ("numpy>=1.0",)))
    base = create_sandbox.execute(CreateSandboxCommand(OTHER_CHAT))

    assert subset.session_id not in members and base.session_id not in members
    assert subset.packages == ("numpy>=1.0",) and base.packages == ()
    assert pool.status().available == 2 and pool.counters.claimed == 0
    assert pools.on_demand == 2
    pools.close(wait_s=5)


def test_a_failed_environment_build_counts_as_a_replenish_failure(world: World) -> None:
    from domain.errors import EnvironmentBuildError

    environments = EnvironmentProvisioning(
        FakeEnvironmentStore(fail=EnvironmentBuildError("no wheel for nosuchpkg")),
        FakeEnvironmentRuntime(world.runtime),
    )
    pools = WarmPools(
        world.runtime, world.repository, world.clock, world.logger, environments=environments
    )
    pools.apply([definition(1, "bad", ("nosuchpkg",))])
    wait_filled(pools)
    pool = pools.get("bad")
    assert pool is not None
    # apply() starts a background refill too: one or two attempts, each failed and counted.
    assert pool.counters.replenish_failures >= 1 and pool.status().available == 0
    assert world.runtime.create_calls == [] and not pools.owns(uuid4())
    pools.close(wait_s=5)


def test_many_threads_never_share_a_member(world: World) -> None:
    pool = WarmPool(definition(20), world.runtime, world.repository, world.clock, world.logger)
    pool.fill()
    got: list = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def claim() -> None:
        start.wait()
        for _ in range(3):
            member = pool.claim(
                chat_id=uuid4(), created_at=world.clock.now(), expires_at=world.clock.now()
            )
            if member is not None:
                with lock:
                    got.append(member.session_id)

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool.close(wait_s=5)

    assert len(got) == len(set(got))
    assert len(got) >= 20  # refills may add more, never a duplicate


def test_a_claimed_member_is_never_handed_out_again(world: World) -> None:
    pools = pools_for(world, definition(1))
    first = create(world, pools, CHAT)
    wait_filled(pools)
    second = create(world, pools, OTHER_CHAT)
    assert first.session_id != second.session_id
    assert first.container_id != second.container_id
    pools.close(wait_s=5)


def test_replenish_failure_releases_the_semaphore_and_counts(world: World) -> None:
    pool = WarmPool(definition(1), world.runtime, world.repository, world.clock, world.logger)
    world.runtime.fail_create = RuntimeUnavailableError("engine down")
    pool.fill()
    assert pool.counters.replenish_failures == 1
    assert "pool_replenish_failed" in world.logger.events()
    world.runtime.fail_create = None
    pool.fill()  # would block forever if the failure had kept the semaphore
    assert pool.status().available == 1
    pool.close()


def test_a_member_is_warmed_up_and_one_that_cannot_run_code_is_never_pooled(
    world: World,
) -> None:
    pool = WarmPool(definition(1), world.runtime, world.repository, world.clock, world.logger)
    world.runtime.die_on_every_execute = True
    pool.fill()
    (broken,) = world.runtime.create_calls
    assert pool.status().available == 0 and pool.counters.replenish_failures == 1
    assert f"fake-{broken.hex[:12]}" in world.runtime.stopped and not pool.owns(broken)

    world.runtime.die_on_every_execute = False
    pool.fill()
    (member,) = world.runtime.alive.values()
    # Its interpreter ran the warm-up cells, output path included.
    assert world.runtime.executed == [(member.chat_id, "print(0)")] * 3
    pool.close()


def test_a_member_that_boots_after_close_is_destroyed(world: World) -> None:
    world.runtime.create_gate = threading.Event()
    pool = WarmPool(definition(1), world.runtime, world.repository, world.clock, world.logger)
    pool.request_refill()
    world.runtime.blocked.acquire(timeout=5)  # the worker is inside create
    pool.close()
    world.runtime.create_gate.set()
    pool.close(wait_s=5)
    assert world.runtime.alive == {}
    assert "pool_member_discarded" in world.logger.events()


def test_nothing_is_done_when_the_pool_filled_meanwhile(world: World) -> None:
    pool = WarmPool(definition(2), world.runtime, world.repository, world.clock, world.logger)
    pool.fill()
    calls = len(world.runtime.create_calls)
    pool.fill()
    pool.request_refill()
    assert len(world.runtime.create_calls) == calls == 2
    pool.close()


def test_health_check_destroys_frozen_members_and_refills(world: World) -> None:
    probe = Probe()
    pool = WarmPool(
        definition(2), world.runtime, world.repository, world.clock, world.logger, probe
    )
    pool.fill()
    frozen = next(iter(world.runtime.alive))
    probe.frozen.add(frozen)

    removed = pool.check_health()
    pool.fill()

    assert removed == 1
    assert frozen in world.runtime.stopped
    assert pool.counters.health_failures == 1
    assert pool.status().available == 2
    pool.close(wait_s=5)


def test_reconcile_keeps_idle_and_claimed_members_and_removes_strays(world: World) -> None:
    pools = pools_for(world, definition(2))
    claimed = create(world, pools)
    wait_filled(pools)
    stray = world.runtime.create(
        session_id=(stray_id := uuid4()),
        chat_id=stray_id,
        created_at=world.clock.now(),
        expires_at=world.clock.now(),
    )

    report = ReconcileSandboxes(
        world.repository, world.locker, world.runtime, world.logger, pools
    ).execute()

    assert report.removed_orphans == [stray.container_id]
    assert claimed.container_id in world.runtime.alive
    assert pools.get("base").status().available == 2  # type: ignore[union-attr]
    pools.close(wait_s=5)


def test_after_the_service_is_gone_its_members_are_orphans(world: World) -> None:
    pools = pools_for(world, definition(2))
    members = set(world.runtime.alive)
    # A new service (after kill -9) has no pool owning them.
    report = ReconcileSandboxes(
        world.repository, world.locker, world.runtime, world.logger, None
    ).execute()
    assert set(report.removed_orphans) == members
    pools.close()


def test_execute_code_runs_in_a_claimed_member(world: World) -> None:
    pools = pools_for(world, definition(1))
    execution = ExecuteCode(
        world.repository, world.locker, world.runtime, world.clock, world.logger, TTL, warm=pools
    ).execute(ExecuteCodeCommand(CHAT, ExecutionRequest(code="hi")))
    assert execution.result.stdout == "hi"
    assert world.runtime.create_calls[0] == execution.session.session_id
    pools.close(wait_s=5)


def test_capacity_rules() -> None:
    for bad in (
        dict(buffer_min=-1, buffer_max=1, pool_min=0, pool_max=1),
        dict(buffer_min=2, buffer_max=1, pool_min=0, pool_max=5),
        dict(buffer_min=0, buffer_max=1, pool_min=3, pool_max=2),
    ):
        with pytest.raises(InvalidPoolError):
            PoolCapacity(**bad)
    with pytest.raises(InvalidPoolError):
        PoolDefinition("Not_DNS", "python", (), PoolCapacity.fixed(1))
    capacity = PoolCapacity(buffer_min=1, buffer_max=3, pool_min=0, pool_max=4)
    assert capacity.wanted_idle(allocated=2) == 2  # never more than pool_max in total
    assert not capacity.needs_refill(idle=1, allocated=3)
    assert pool_size_for(10, 0.25) == 2
    assert pool_size_for(1, 0.1) == 1
    assert pool_size_for(10, 0) == 0
    assert replenish_parallelism(2) == 1
    assert 1 < replenish_parallelism(32) <= 4


class Rebinder:
    def __init__(self, fail: Exception | None = None) -> None:
        self.bound: list = []
        self.fail = fail

    def rebind(self, session) -> None:
        if self.fail is not None:
            raise self.fail
        self.bound.append(session)


def test_a_claimed_member_is_rebound_to_the_chat(world: World) -> None:
    rebinder = Rebinder()
    pool = WarmPool(
        definition(1),
        world.runtime,
        world.repository,
        world.clock,
        world.logger,
        None,
        1.0,
        rebinder,
    )
    pool.fill()
    claimed = pool.claim(chat_id=CHAT, created_at=world.clock.now(), expires_at=world.clock.now())
    assert claimed is not None and rebinder.bound == [claimed]
    assert claimed.chat_id == CHAT
    pool.close(wait_s=5)


def test_a_failed_rebind_discards_the_member_and_falls_back(world: World) -> None:
    from domain.errors import SandboxGoneError

    rebinder = Rebinder(SandboxGoneError("agent gone"))
    pool = WarmPool(
        definition(1),
        world.runtime,
        world.repository,
        world.clock,
        world.logger,
        None,
        1.0,
        rebinder,
    )
    pool.fill()
    (member,) = list(world.runtime.alive)
    claimed = pool.claim(chat_id=CHAT, created_at=world.clock.now(), expires_at=world.clock.now())
    pool.close(wait_s=5)
    assert claimed is None
    assert member in world.runtime.stopped
    assert pool.counters.claimed == 0 and pool.counters.missed == 1
    assert "pool_rebind_failed" in world.logger.events()


def test_a_pools_status_reads_its_allocated_members_records_in_one_call(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/pools and every metrics scrape read the status: one read, not one per member."""
    pools = pools_for(world, PoolDefinition("base", "python", (), PoolCapacity(3, 3, 0, 8)))
    pool = pools.get("base")
    assert pool is not None
    chats = [uuid4() for _ in range(3)]
    for chat in chats:
        create(world, pools, chat)
    reads: list[int] = []
    get_many = world.repository.get_many

    def counted(ids):
        reads.append(len(ids))
        return get_many(ids)

    monkeypatch.setattr(world.repository, "get_many", counted)
    monkeypatch.setattr(world.repository, "get", lambda _id: pytest.fail("one read per member"))
    assert pool.status().allocated == 3
    # A chat that ended no longer counts.
    ended = world.repository.get_active_by_chat_id(chats[0])
    assert ended is not None
    world.repository.delete(ended.session_id)
    assert pool.status().allocated == 2
    assert reads == [3, 3]
    pools.close(wait_s=5)


def test_a_pool_whose_build_fails_retries_after_a_growing_capped_delay(world: World) -> None:
    """Every claim and health round asks for a refill; after failed starts it waits 2 s, 4 s,
    ... up to 5 minutes, instead of rebuilding a broken environment each time."""
    from datetime import timedelta

    from domain.environment import Environment
    from domain.errors import EnvironmentBuildError
    from domain.execution import Language
    from usecase.pool_replenish import EnvironmentMembers, retry_delay

    store = FakeEnvironmentStore(fail=EnvironmentBuildError("no wheel for nosuchpkg"))
    attempts: list[Environment] = []
    build = store.ensure

    def counted(environment: Environment):
        attempts.append(environment)
        return build(environment)

    store.ensure = counted  # type: ignore[method-assign]
    environments = EnvironmentProvisioning(store, FakeEnvironmentRuntime(world.runtime))
    bad = definition(1, "bad", ("nosuchpkg",))
    maker = EnvironmentMembers(environments, Environment(Language.PYTHON, ("nosuchpkg",)))
    pool = WarmPool(bad, world.runtime, world.repository, world.clock, world.logger, maker=maker)

    def refill_now() -> None:
        pool.request_refill()
        for worker in [t for t in threading.enumerate() if t.name == "pool-bad"]:
            worker.join(5)

    pool.fill()
    assert len(attempts) == 1
    assert world.logger.named("pool_replenish_failed")[-1]["retry_in_s"] == 2.0
    refill_now()  # a health round within the delay: nothing
    assert len(attempts) == 1
    world.clock.advance(timedelta(seconds=2))
    refill_now()
    assert len(attempts) == 2  # failed again: 4 s now
    world.clock.advance(timedelta(seconds=3))
    refill_now()
    assert len(attempts) == 2
    world.clock.advance(timedelta(seconds=1))
    refill_now()
    assert len(attempts) == 3
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 8, 9, 40)] == [2, 4, 8, 256, 300, 300]
    # Once a start succeeds, refills are immediate again.
    store.fail = None
    world.clock.advance(timedelta(seconds=8))
    refill_now()
    assert pool.status().available == 1 and len(attempts) == 4
    pool.close(wait_s=5)
