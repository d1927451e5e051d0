"""Get, renew, destroy, list and the expiry sweep."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from domain.errors import RuntimeUnavailableError, SandboxNotFoundError
from domain.sandbox import SandboxStatus
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from testkit.world import CHAT, OTHER_CHAT, TTL, World
from usecase.sandbox import (
    CleanupExpiredSandboxes,
    CreateSandbox,
    CreateSandboxCommand,
    DestroySandbox,
    GetSandbox,
    ListSandboxes,
    RenewSandbox,
)


def create(world: World, chat=CHAT, locker=None, max_lifetime=None):
    return CreateSandbox(
        world.repository,
        locker or world.locker,
        world.runtime,
        world.clock,
        world.logger,
        TTL,
        max_lifetime,
    ).execute(CreateSandboxCommand(chat))


def cleanup(world: World, locker=None) -> CleanupExpiredSandboxes:
    return CleanupExpiredSandboxes(
        world.repository, locker or world.locker, world.runtime, world.clock, world.logger
    )


def renew(world: World) -> RenewSandbox:
    return RenewSandbox(world.repository, world.locker, world.clock, world.logger, TTL)


def test_get_returns_the_chats_session_or_raises_not_found(world: World) -> None:
    session = create(world)
    assert GetSandbox(world.repository).execute(CHAT) == session
    with pytest.raises(SandboxNotFoundError):
        GetSandbox(world.repository).execute(OTHER_CHAT)


def test_list_filters_by_status_and_pages_in_creation_order(world: World) -> None:
    first = create(world, CHAT)
    world.clock.advance(timedelta(seconds=1))
    second = create(world, OTHER_CHAT)
    world.repository.save(second.marked_dead())
    listing = ListSandboxes(world.repository)

    assert [s.session_id for s in listing.execute()] == [first.session_id, second.session_id]
    assert listing.execute(status=SandboxStatus.RUNNING) == [first]
    assert [s.session_id for s in listing.execute(limit=1, offset=1)] == [second.session_id]


def test_renew_slides_the_deadline_under_the_cap(world: World) -> None:
    session = create(world, max_lifetime=timedelta(minutes=7))
    world.clock.advance(timedelta(minutes=1))
    assert renew(world).execute(CHAT).expires_at == world.clock.now() + TTL
    world.clock.advance(timedelta(minutes=3))
    renewed = renew(world).execute(CHAT)

    assert renewed.expires_at == session.created_at + timedelta(minutes=7)
    assert world.repository.get_active_by_chat_id(CHAT) == renewed
    assert world.logger.events()[-1] == "sandbox_renewed"


@pytest.mark.parametrize("state", ["none", "expired", "dead"])
def test_renew_refuses_a_chat_without_a_usable_sandbox(world: World, state: str) -> None:
    if state != "none":
        session = create(world)
        if state == "expired":
            world.clock.advance(TTL)
        else:
            world.repository.save(session.marked_dead())
    with pytest.raises(SandboxNotFoundError):
        renew(world).execute(CHAT)


def test_destroy_stops_and_deletes_and_is_idempotent(world: World) -> None:
    session = create(world)
    destroy = DestroySandbox(world.repository, world.locker, world.runtime, world.logger)

    assert destroy.execute(CHAT) == session
    assert destroy.execute(CHAT) is None
    assert world.runtime.stopped == [session.container_id]
    assert world.repository.get_active_by_chat_id(CHAT) is None


def test_destroy_keeps_the_record_when_the_runtime_cannot_stop(world: World) -> None:
    session = create(world)
    world.runtime.fail_stop = RuntimeUnavailableError("down")
    destroy = DestroySandbox(world.repository, world.locker, world.runtime, world.logger)

    with pytest.raises(RuntimeUnavailableError):
        destroy.execute(CHAT)
    assert world.repository.get_active_by_chat_id(CHAT) == session


def test_cleanup_removes_expired_and_dead_sessions_only(world: World) -> None:
    expired = create(world, CHAT)
    world.clock.advance(TTL)
    live = create(world, OTHER_CHAT)

    assert cleanup(world).execute() == [expired]
    assert world.repository.get_active_by_chat_id(OTHER_CHAT) == live
    assert world.runtime.stopped == [expired.container_id]


def test_cleanup_skips_a_session_renewed_after_the_listing(world: World) -> None:
    session = create(world)
    world.clock.advance(TTL)
    sweep = cleanup(world)
    stale_listing = world.repository.list_expired(world.clock.now())
    world.repository.save(session.renewed(world.clock.now(), TTL))
    world.repository.list_expired = lambda now: stale_listing  # type: ignore[method-assign]

    assert sweep.execute() == []
    assert world.runtime.stopped == []


def test_cleanup_racing_a_create_for_the_same_chat_keeps_the_new_sandbox(world: World) -> None:
    """Create replaces the expired sandbox while the sweep waits for the chat's lock."""
    locker = ProcessLocalSandboxLifecycleLocker()
    old = create(world, locker=locker)
    world.clock.advance(TTL)
    create_started = threading.Event()
    allow_create = threading.Event()
    original_create = world.runtime.create

    def blocking_create(**kwargs):
        create_started.set()
        assert allow_create.wait(5)
        return original_create(**kwargs)

    world.runtime.create = blocking_create  # type: ignore[method-assign]
    results: dict[str, Any] = {}
    creator = threading.Thread(target=lambda: results.update(new=create(world, locker=locker)))
    creator.start()
    assert create_started.wait(5)
    # The old record is already gone; feed the sweep the listing it would have made a moment ago.
    world.repository.list_expired = lambda now: [old]  # type: ignore[method-assign]
    sweeper = threading.Thread(
        target=lambda: results.update(cleaned=cleanup(world, locker).execute())
    )
    sweeper.start()
    allow_create.set()
    creator.join(5)
    sweeper.join(5)

    assert results["cleaned"] == []
    assert world.repository.get_active_by_chat_id(CHAT) == results["new"]
    assert world.runtime.stopped == [old.container_id]  # by the create, once
    assert results["new"].container_id in world.runtime.alive


def test_cleanup_logs_a_failing_stop_keeps_the_record_and_goes_on(world: World) -> None:
    first = create(world, CHAT)
    second = create(world, OTHER_CHAT)
    world.clock.advance(TTL)
    original_stop = world.runtime.stop

    def stop(container_id: str) -> None:
        if container_id == first.container_id:
            raise RuntimeUnavailableError("down")
        original_stop(container_id)

    world.runtime.stop = stop  # type: ignore[method-assign]

    assert cleanup(world).execute() == [second]
    assert world.repository.get_active_by_chat_id(CHAT) == first
    assert ("error", "sandbox_clean_failed") in [(lv, m) for lv, m, _ in world.logger.messages]
