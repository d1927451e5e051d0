"""Warm pool members count against the host's sandbox cap (SANDBOXD_MAX_SANDBOXES): running
chats + every pool's starting and idle members never pass it, and chats come first."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

import pytest

from domain.errors import SandboxLimitError
from domain.pool import PoolCapacity, PoolDefinition
from domain.sandbox import SandboxSession
from domain.tenant import Caller
from testkit.world import World
from usecase.pool import WarmPool, WarmPools
from usecase.pool_budget import HostBudget
from usecase.pool_replenish import BaseMembers
from usecase.sandbox import CreateSandboxCommand, DestroySandbox, Placement

NODE = "a"


def definition(size: int, name: str = "base", packages: tuple[str, ...] = ()) -> PoolDefinition:
    return PoolDefinition(name, "python", packages, PoolCapacity.fixed(size))


def capped_pools(world: World, cap: int, *definitions: PoolDefinition) -> WarmPools:
    pools = WarmPools(
        world.runtime, world.repository, world.clock, world.logger, node=NODE, max_sandboxes=cap
    )
    pools.apply(definitions)
    for pool in pools.pools():
        pool.fill()
    return pools


def idle(pools: WarmPools) -> int:
    return sum(pool.status().available for pool in pools.pools())


def live(world: World) -> int:
    """Sandboxes the fake runtime holds now: the host's real load."""
    return len(world.runtime.alive)


def create(world: World, pools: WarmPools, cap: int, chat: UUID | None = None) -> SandboxSession:
    return world.create_sandbox(
        warm=pools,
        placement=Placement(node=NODE, max_sandboxes=cap),
    ).execute(CreateSandboxCommand(chat or uuid4()))


def test_a_pool_larger_than_the_cap_stops_at_the_cap_and_says_so_once(world: World) -> None:
    pools = capped_pools(world, 3, definition(5))
    pool = pools.get("base")
    assert pool is not None

    pool.fill()  # asking again changes nothing and logs nothing new

    assert idle(pools) == 3 == live(world)
    capped = world.logger.named("pool_replenish_capped")
    assert capped == [{"pool": "base", "running": 0, "held": 3, "limit": 3}]
    assert pool.counters.replenish_capped >= 2
    pools.close(wait_s=5)


def test_running_chats_leave_the_pools_only_what_is_left(world: World) -> None:
    pools = capped_pools(world, 3)
    create(world, pools, 3)
    create(world, pools, 3)
    pools.apply([definition(5)])
    for pool in pools.pools():
        pool.fill()

    assert idle(pools) == 1
    assert live(world) == 3
    pools.close(wait_s=5)


def test_several_pools_share_one_budget(world: World) -> None:
    # "two" comes once "one" holds its room: applied together, their background refills race.
    pools = capped_pools(world, 4, definition(3, "one"))
    pools.apply([definition(3, "one"), definition(3, "two")])
    for pool in pools.pools():
        pool.fill()
    assert idle(pools) == 4 == live(world)
    assert {entry["pool"] for entry in world.logger.named("pool_replenish_capped")} == {"two"}
    pools.close(wait_s=5)


def test_at_the_cap_a_new_chat_claims_a_member_without_being_counted_twice(
    world: World,
) -> None:
    pools = capped_pools(world, 3, definition(5))
    members = set(world.runtime.create_calls)

    sessions = [create(world, pools, 3) for _ in range(3)]

    assert {s.session_id for s in sessions} <= members  # every chat was served from the pool
    assert live(world) == 3
    assert idle(pools) == 0  # no refill: the chats use the whole budget
    assert not world.logger.named("sandbox_limit_reached")
    pools.close(wait_s=5)


def test_at_the_cap_an_on_demand_chat_evicts_an_idle_member_instead_of_being_refused(
    world: World,
) -> None:
    pools = capped_pools(world, 3, definition(3))
    before = set(world.runtime.alive)
    assert len(before) == 3

    chat = create_on_demand(world, pools)

    assert chat.container_id not in before
    assert live(world) == 3
    assert idle(pools) == 2
    evicted = world.logger.named("pool_member_evicted")
    assert len(evicted) == 1 and evicted[0]["container_id"] not in world.runtime.alive
    assert pools.get("base").counters.evicted == 1  # type: ignore[union-attr]
    assert not world.logger.named("sandbox_limit_reached")
    pools.close(wait_s=5)


def create_on_demand(world: World, pools: WarmPools) -> SandboxSession:
    """A chat none of the pools serves (its packages, say): created on demand."""

    class Missing:
        def claim(self, **_: object) -> None:
            return None

        def settle(self, session_id: UUID) -> None:
            pools.settle(session_id)

        def give_back(self, session_id: UUID) -> None:
            pools.give_back(session_id)

        def make_room(self) -> None:
            pools.make_room()

        def owns(self, session_id: UUID) -> bool:
            return pools.owns(session_id)

    return world.create_sandbox(
        warm=Missing(),
        placement=Placement(node=NODE, max_sandboxes=3),
    ).execute(CreateSandboxCommand(uuid4()))


def test_a_capped_pool_resumes_when_a_chat_ends(world: World) -> None:
    pools = capped_pools(world, 2, definition(2))
    chat = uuid4()
    create(world, pools, 2, chat)
    pool = pools.get("base")
    assert pool is not None
    pool.fill()
    assert idle(pools) == 1  # one chat + one member: the cap

    DestroySandbox(world.repository, world.locker, world.runtime, world.logger, NODE).execute(chat)
    pool.fill()  # what the next claim or health round does

    assert idle(pools) == 2 == live(world)
    assert world.logger.named("pool_replenish_resumed")
    pools.close(wait_s=5)


def test_a_member_whose_room_a_chat_took_while_it_booted_is_destroyed(world: World) -> None:
    budget = HostBudget(world.repository, NODE, 1)

    class ChatArrivesMeanwhile(BaseMembers):
        def make(self, member_id: UUID, now: datetime) -> SandboxSession:
            member = super().make(member_id, now)
            # An on-demand chat passed the provisioner's check (no record yet) and was saved;
            # nothing was idle for it to evict: this member was still booting.
            create(world, WarmPools(world.runtime, world.repository, world.clock, world.logger), 1)
            return member

    pool = WarmPool(
        definition(1),
        world.runtime,
        world.repository,
        world.clock,
        world.logger,
        maker=ChatArrivesMeanwhile(world.runtime),
        budget=budget,
    )
    pool.fill()

    assert pool.status().available == 0
    assert live(world) == 1  # the chat's sandbox only
    assert world.logger.named("pool_member_discarded")
    assert budget.held() == 0
    pool.close(wait_s=5)


def test_without_a_cap_pools_fill_as_defined(world: World) -> None:
    pools = WarmPools(world.runtime, world.repository, world.clock, world.logger)
    pools.apply([definition(6)])
    for pool in pools.pools():
        pool.fill()
    assert idle(pools) == 6
    assert not world.logger.named("pool_replenish_capped")
    pools.close(wait_s=5)


def test_a_claimed_member_refused_by_the_per_key_cap_goes_back_to_its_pool(world: World) -> None:
    """The cap is checked by the save alone on a claim: a key at its cap takes a member, is
    refused, and the member is idle again, first in line, alive (no churn for the pool)."""
    pools = capped_pools(world, 10, definition(2))
    here = Placement(node=NODE, max_sandboxes=10, max_per_owner=1)
    key = Caller("alice")
    creator = world.create_sandbox(warm=pools, placement=here)
    first = creator.execute(CreateSandboxCommand(uuid4(), caller=key))
    pool = pools.get("base")
    assert pool is not None
    front = pool.status().available
    with pytest.raises(SandboxLimitError, match="this API key"):
        creator.execute(CreateSandboxCommand(uuid4(), caller=key))
    assert pool.status().available == front
    assert world.runtime.stopped == []
    assert world.repository.count_running(NODE) == 1
    # The member given back serves the next chat, and never the refused one's record.
    other = creator.execute(CreateSandboxCommand(uuid4(), caller=Caller("bob")))
    assert other.owner == "bob" and other.session_id != first.session_id
    assert pool.counters.claimed == 2
    pools.close(wait_s=5)
