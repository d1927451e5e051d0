"""Sandbox caps per node and per key, and chats whose sandbox runs on another node."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest

from domain.errors import SandboxLimitError, WrongNodeError
from domain.execution import ExecutionRequest
from domain.sandbox import SandboxStatus
from domain.tenant import Caller
from testkit.world import CHAT, TTL, World
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.sandbox import (
    CreateSandboxCommand,
    DestroySandbox,
    Placement,
)

ALICE = Caller("alice")
BOB = Caller("bob")


def create(world: World, caller: Caller, placement: Placement, chat: UUID | None = None):
    return world.create_sandbox(
        placement=placement,
    ).execute(CreateSandboxCommand(chat or uuid4(), caller=caller))


def execute(world: World, caller: Caller, placement: Placement, chat: UUID, code="print(1)"):
    return ExecuteCode(
        world.repository,
        world.locker,
        world.runtime,
        world.clock,
        world.logger,
        TTL,
        placement=placement,
    ).execute(ExecuteCodeCommand(chat, ExecutionRequest(code=code), caller=caller))


def test_a_new_chat_past_the_node_cap_is_refused_and_existing_chats_keep_working(
    world: World,
) -> None:
    here = Placement(node="a", max_sandboxes=2)
    first = create(world, ALICE, here)
    create(world, BOB, here)
    with pytest.raises(SandboxLimitError, match="this host is at its limit of 2"):
        create(world, BOB, here)
    assert len(world.runtime.create_calls) == 2  # refused before anything was started
    assert world.logger.named("sandbox_limit_reached")
    # The chats that have a sandbox run, and a dead one is replaced (not a new chat).
    assert execute(world, ALICE, here, first.chat_id).result.exit_code == 0
    assert execute(world, ALICE, here, first.chat_id, code="kill").result.sandbox_replaced


def test_the_per_key_cap_leaves_room_for_other_keys(world: World) -> None:
    here = Placement(node="a", max_sandboxes=10, max_per_owner=1)
    create(world, ALICE, here)
    with pytest.raises(SandboxLimitError, match="this API key"):
        create(world, ALICE, here)
    assert create(world, BOB, here).owner == "bob"


def test_only_this_nodes_running_sandboxes_count(world: World) -> None:
    create(world, ALICE, Placement(node="b"))
    dead = create(world, ALICE, Placement(node="a"))
    world.repository.save(dead.marked_dead())
    assert create(world, ALICE, Placement(node="a", max_sandboxes=1)).node == "a"


def test_creates_that_raced_past_the_cap_are_rolled_back(world: World) -> None:
    """Another replica saved a record between the check and this save: the save, which counts
    and inserts in one step, saves nothing, and the later create stops its sandbox."""
    here = Placement(node="a", max_sandboxes=1)
    original = world.runtime.create

    def create_while_another_replica_creates(**kwargs):
        session = original(**kwargs)
        if len(world.runtime.create_calls) == 1:
            create(world, BOB, Placement(node="a"))
        return session

    world.runtime.create = create_while_another_replica_creates  # type: ignore[method-assign]
    with pytest.raises(SandboxLimitError):
        create(world, ALICE, here, chat=CHAT)
    assert world.repository.get_active_by_chat_id(CHAT) is None
    assert world.repository.count_running("a") == 1
    assert len(world.runtime.stopped) == 1


def test_a_chat_on_another_node_gets_wrong_node_naming_it(world: World) -> None:
    session = create(world, ALICE, Placement(node="node-b"), chat=CHAT)
    here = Placement(node="node-a")
    with pytest.raises(WrongNodeError, match="node-b") as raised:
        execute(world, ALICE, here, CHAT)
    assert raised.value.node == "node-b"
    with pytest.raises(WrongNodeError):
        create(world, ALICE, here, chat=CHAT)
    with pytest.raises(WrongNodeError):
        destroy = DestroySandbox(
            world.repository, world.locker, world.runtime, world.logger, "node-a"
        )
        destroy.execute(CHAT, ALICE)
    assert world.repository.get_active_by_chat_id(CHAT) == session
    assert world.runtime.stopped == [] and world.runtime.executed == []
    # Its own node serves it.
    assert execute(world, ALICE, Placement(node="node-b"), CHAT).session.status is (
        SandboxStatus.RUNNING
    )
