"""Tenants: a chat belongs to the key that created it; the use cases enforce it for every
command, so each transport only passes who called."""

from __future__ import annotations

from dataclasses import replace

import pytest

from domain.errors import SandboxNotFoundError
from domain.execution import ExecutionRequest
from domain.tenant import OPERATOR, Caller
from testkit.world import CHAT, OTHER_CHAT, TTL, World
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.sandbox import (
    CreateSandbox,
    CreateSandboxCommand,
    DestroySandbox,
    GetSandbox,
    ListSandboxes,
    RenewSandbox,
)

ALICE = Caller("alice")
BOB = Caller("bob")
ADMIN = Caller("ops", admin=True)


def create(world: World, caller: Caller, chat=CHAT):
    return CreateSandbox(
        world.repository, world.locker, world.runtime, world.clock, world.logger, TTL
    ).execute(CreateSandboxCommand(chat, caller=caller))


def execute(world: World, caller: Caller, chat=CHAT, code="print(1)"):
    return ExecuteCode(
        world.repository, world.locker, world.runtime, world.clock, world.logger, TTL
    ).execute(ExecuteCodeCommand(chat, ExecutionRequest(code=code), caller=caller))


def test_a_new_chat_belongs_to_the_key_that_created_it(world: World) -> None:
    assert create(world, ALICE).owner == "alice"
    assert execute(world, BOB, chat=OTHER_CHAT).session.owner == "bob"


def test_another_key_gets_not_found_on_every_command_and_changes_nothing(world: World) -> None:
    session = create(world, ALICE)
    calls = {
        "ensure": lambda: create(world, BOB),
        "execute": lambda: execute(world, BOB),
        "get": lambda: GetSandbox(world.repository).execute(CHAT, BOB),
        "renew": lambda: RenewSandbox(
            world.repository, world.locker, world.clock, world.logger, TTL
        ).execute(CHAT, BOB),
        "destroy": lambda: DestroySandbox(
            world.repository, world.locker, world.runtime, world.logger
        ).execute(CHAT, BOB),
    }
    for name, call in calls.items():
        with pytest.raises(SandboxNotFoundError) as raised:
            call()
        # The same words as for a chat without a sandbox: nothing says whose it is.
        assert str(raised.value) == f"chat {CHAT} has no sandbox", name
    assert world.repository.get_active_by_chat_id(CHAT) == session
    assert world.runtime.executed == []
    assert world.runtime.stopped == []
    assert len(world.runtime.create_calls) == 1


def test_the_owner_and_admins_reach_the_chat(world: World) -> None:
    create(world, ALICE)
    assert execute(world, ALICE).result.exit_code == 0
    assert GetSandbox(world.repository).execute(CHAT, ADMIN).owner == "alice"
    # An admin running code in a tenant's chat does not take it over.
    assert execute(world, ADMIN).session.owner == "alice"
    destroyed = DestroySandbox(world.repository, world.locker, world.runtime, world.logger).execute(
        CHAT, ADMIN
    )
    assert destroyed is not None and destroyed.owner == "alice"


def test_a_replacement_keeps_the_owner(world: World) -> None:
    create(world, ALICE)
    execution = execute(world, ALICE, code="kill")
    assert execution.result.sandbox_replaced
    assert execution.session.owner == "alice"


def test_listing_shows_the_callers_own_chats_and_admins_all(world: World) -> None:
    create(world, ALICE, chat=CHAT)
    create(world, BOB, chat=OTHER_CHAT)
    listing = ListSandboxes(world.repository)
    assert [s.chat_id for s in listing.execute(caller=ALICE)] == [CHAT]
    assert [s.chat_id for s in listing.execute(caller=BOB)] == [OTHER_CHAT]
    assert {s.chat_id for s in listing.execute(caller=ADMIN)} == {CHAT, OTHER_CHAT}
    assert listing.execute(caller=Caller("carol")) == []


def test_records_without_an_owner_stay_reachable_but_are_listed_to_admins_only(
    world: World,
) -> None:
    """Rows from before migration 0003 (and the operator's chats) have no owner."""
    session = create(world, OPERATOR)
    assert session.owner == ""
    assert execute(world, BOB).session.session_id == session.session_id
    assert ListSandboxes(world.repository).execute(caller=BOB) == []
    assert len(ListSandboxes(world.repository).execute(caller=ADMIN)) == 1


def test_may_access() -> None:
    assert ALICE.may_access("alice") and not ALICE.may_access("bob")
    assert ADMIN.may_access("bob") and ALICE.may_access("")
    assert replace(ALICE, admin=True).listing_owner is None and ALICE.listing_owner == "alice"
