"""The sweep skips a busy chat instead of aborting, and judges only its own node's records."""

from __future__ import annotations

import threading
from datetime import timedelta

from domain.tenant import Caller
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from testkit.world import CHAT, OTHER_CHAT, TTL, World
from usecase.reconcile import ReconcileSandboxes
from usecase.sandbox import CleanupExpiredSandboxes, CreateSandboxCommand, Placement


def create(world: World, chat, node="a"):
    return world.create_sandbox(
        placement=Placement(node=node),
    ).execute(CreateSandboxCommand(chat, caller=Caller("alice")))


def test_a_busy_chat_is_skipped_this_round_and_the_others_are_cleaned(world: World) -> None:
    busy = create(world, CHAT)
    idle = create(world, OTHER_CHAT)
    world.clock.advance(TTL + timedelta(seconds=1))
    locker = ProcessLocalSandboxLifecycleLocker()
    held, release = threading.Event(), threading.Event()

    def long_execution() -> None:
        with locker.lock(CHAT):
            held.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=long_execution)
    holder.start()
    try:
        held.wait(timeout=30)
        sweep = CleanupExpiredSandboxes(
            world.repository,
            locker.with_timeout(0.05),
            world.runtime,
            world.clock,
            world.logger,
            node="a",
        )
        assert [s.chat_id for s in sweep.execute()] == [OTHER_CHAT]
        assert [e["chat_id"] for e in world.logger.named("sandbox_clean_skipped_busy")] == [
            str(CHAT)
        ]
        assert world.repository.get(busy.session_id) == busy
        assert world.repository.get(idle.session_id) is None
    finally:
        release.set()
        holder.join()
    # Next round, the chat is free again and cleaned.
    assert [s.chat_id for s in sweep.execute()] == [CHAT]


def test_the_sweep_leaves_other_nodes_records_alone(world: World) -> None:
    mine = create(world, CHAT, node="a")
    theirs = create(world, OTHER_CHAT, node="b")
    world.clock.advance(TTL + timedelta(seconds=1))
    cleaned = CleanupExpiredSandboxes(
        world.repository, world.locker, world.runtime, world.clock, world.logger, node="a"
    ).execute()
    assert cleaned == [mine]
    assert world.repository.get(theirs.session_id) == theirs


def test_reconciliation_judges_only_its_nodes_records(world: World) -> None:
    mine = create(world, CHAT, node="a")
    theirs = create(world, OTHER_CHAT, node="b")
    # Node a's runtime knows nothing of node b's sandboxes, nor (now) of its own.
    world.runtime.alive.clear()
    report = ReconcileSandboxes(
        world.repository, world.locker, world.runtime, world.logger, node="a"
    ).execute()
    assert [s.session_id for s in report.marked_dead] == [mine.session_id]
    assert world.repository.get(theirs.session_id) == theirs
