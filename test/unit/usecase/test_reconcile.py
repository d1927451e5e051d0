from __future__ import annotations

from uuid import uuid4

from domain.errors import RuntimeUnavailableError
from domain.sandbox import ManagedSandbox, SandboxStatus
from testkit.world import CHAT, OTHER_CHAT, TTL, World
from usecase.reconcile import ReconcileSandboxes
from usecase.sandbox import CreateSandbox, CreateSandboxCommand


def create(world: World, chat=CHAT):
    return CreateSandbox(
        world.repository, world.locker, world.runtime, world.clock, world.logger, TTL
    ).execute(CreateSandboxCommand(chat))


def reconcile(world: World) -> ReconcileSandboxes:
    return ReconcileSandboxes(world.repository, world.locker, world.runtime, world.logger)


def test_objects_without_a_record_are_removed_and_live_ones_kept(world: World) -> None:
    live = create(world)
    orphan = create(world, OTHER_CHAT)
    world.repository.delete(orphan.session_id)  # as if the service crashed before saving

    report = reconcile(world).execute()

    assert report.removed_orphans == [orphan.container_id]
    assert world.runtime.stopped == [orphan.container_id]
    assert live.container_id in world.runtime.alive
    assert report.marked_dead == []


def test_records_whose_object_is_gone_are_marked_dead(world: World) -> None:
    session = create(world)
    del world.runtime.alive[session.container_id]  # killed from outside

    report = reconcile(world).execute()

    assert [s.session_id for s in report.marked_dead] == [session.session_id]
    marked = world.repository.get_active_by_chat_id(CHAT)
    assert marked is not None and marked.status is SandboxStatus.DEAD
    assert "sandbox_marked_dead" in world.logger.events()


def test_an_object_of_a_dead_record_is_removed_as_an_orphan(world: World) -> None:
    session = create(world)
    world.repository.save(session.marked_dead())

    reconcile(world).execute()

    assert world.runtime.stopped == [session.container_id]


def test_a_failure_on_one_item_is_logged_and_the_pass_goes_on(world: World) -> None:
    world.runtime.list_managed = lambda: [  # type: ignore[method-assign]
        ManagedSandbox("broken", uuid4(), uuid4()),
        ManagedSandbox("fine", uuid4(), uuid4()),
    ]
    original_stop = world.runtime.stop

    def stop(container_id: str) -> None:
        if container_id == "broken":
            raise RuntimeUnavailableError("down")
        original_stop(container_id)

    world.runtime.stop = stop  # type: ignore[method-assign]

    report = reconcile(world).execute()

    assert report.removed_orphans == ["fine"]
    assert report.failures == 1
    assert "sandbox_reconcile_failed" in world.logger.events()
