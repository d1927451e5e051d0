from __future__ import annotations

import pytest

from domain.errors import RepositoryUnavailableError, RuntimeUnavailableError
from domain.sandbox import SandboxStatus
from testkit.world import CHAT, OTHER_CHAT, TTL, World
from usecase.sandbox import CreateSandbox, CreateSandboxCommand


def create(world: World, max_lifetime=None) -> CreateSandbox:
    return CreateSandbox(
        repository=world.repository,
        locker=world.locker,
        runtime=world.runtime,
        clock=world.clock,
        logger=world.logger,
        ttl=TTL,
        max_lifetime=max_lifetime,
    )


def test_first_create_records_a_running_session_with_ttl(world: World) -> None:
    session = create(world).execute(CreateSandboxCommand(CHAT))

    assert session.status is SandboxStatus.RUNNING
    assert session.expires_at == world.clock.now() + TTL
    assert session.max_expires_at is None
    assert world.repository.get_active_by_chat_id(CHAT) == session
    assert world.logger.events() == ["sandbox_created"]


def test_max_lifetime_is_recorded_and_caps_the_first_deadline(world: World) -> None:
    tiny_cap = TTL / 2
    session = create(world, max_lifetime=tiny_cap).execute(CreateSandboxCommand(CHAT))

    assert session.max_expires_at == world.clock.now() + tiny_cap
    assert session.expires_at == world.clock.now() + tiny_cap


def test_usable_session_is_reused_without_touching_the_runtime(world: World) -> None:
    first = create(world).execute(CreateSandboxCommand(CHAT))
    world.clock.advance(TTL / 2)

    second = create(world).execute(CreateSandboxCommand(CHAT))

    assert second == first
    assert len(world.runtime.create_calls) == 1
    assert world.logger.events() == ["sandbox_created", "sandbox_reused"]


def test_expired_session_is_stopped_and_replaced(world: World) -> None:
    first = create(world).execute(CreateSandboxCommand(CHAT))
    world.clock.advance(TTL)

    second = create(world).execute(CreateSandboxCommand(CHAT))

    assert second.session_id != first.session_id
    assert world.runtime.stopped == [first.container_id]
    assert world.repository.get(first.session_id) is None
    assert world.logger.events() == ["sandbox_created", "sandbox_replaced", "sandbox_created"]


def test_dead_session_is_replaced_even_before_it_expires(world: World) -> None:
    first = create(world).execute(CreateSandboxCommand(CHAT))
    world.repository.save(first.marked_dead())

    second = create(world).execute(CreateSandboxCommand(CHAT))

    assert second.session_id != first.session_id
    assert second.status is SandboxStatus.RUNNING
    assert world.logger.events()[-3:] == [
        "sandbox_found_dead",
        "sandbox_replaced",
        "sandbox_created",
    ]


def test_runtime_failing_on_create_leaves_no_record(world: World) -> None:
    world.runtime.fail_create = RuntimeUnavailableError("engine down")

    with pytest.raises(RuntimeUnavailableError):
        create(world).execute(CreateSandboxCommand(CHAT))

    assert world.repository.get_active_by_chat_id(CHAT) is None
    assert world.repository.list_sessions() == []


def test_store_failing_after_create_stops_the_new_sandbox(world: World) -> None:
    def failing_save(session) -> None:
        raise RepositoryUnavailableError("db down")

    world.repository.save = failing_save  # type: ignore[method-assign]

    with pytest.raises(RepositoryUnavailableError):
        create(world).execute(CreateSandboxCommand(CHAT))

    assert world.runtime.alive == {}
    assert len(world.runtime.stopped) == 1


def test_failing_stop_of_an_expired_session_keeps_its_record(world: World) -> None:
    first = create(world).execute(CreateSandboxCommand(CHAT))
    world.clock.advance(TTL)
    world.runtime.fail_stop = RuntimeUnavailableError("engine down")

    with pytest.raises(RuntimeUnavailableError):
        create(world).execute(CreateSandboxCommand(CHAT))

    assert world.repository.get_active_by_chat_id(CHAT) == first
    assert len(world.runtime.create_calls) == 1


def test_create_holds_the_chats_lock_while_it_works(world: World) -> None:
    seen_locked = []
    original_create = world.runtime.create

    def checking_create(**kwargs):
        seen_locked.append(CHAT in world.locker.held)
        return original_create(**kwargs)

    world.runtime.create = checking_create  # type: ignore[method-assign]
    create(world).execute(CreateSandboxCommand(CHAT))

    assert seen_locked == [True]
    assert world.locker.chat_ids == [CHAT]
    assert CHAT not in world.locker.held


def test_sessions_of_other_chats_are_left_alone(world: World) -> None:
    other = create(world).execute(CreateSandboxCommand(OTHER_CHAT))
    world.clock.advance(TTL)
    create(world).execute(CreateSandboxCommand(CHAT))

    assert world.repository.get_active_by_chat_id(OTHER_CHAT) == other
    assert world.runtime.stopped == []
