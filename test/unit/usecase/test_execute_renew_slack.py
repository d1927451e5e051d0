"""ExecuteCode with renewal slack: fewer writes, and never a sandbox swept within its TTL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.execution import ExecutionRequest
from domain.sandbox import SandboxSession
from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.world import CHAT, MAX_LIFETIME, TTL, World
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.sandbox import CleanupExpiredSandboxes, RenewSandbox

SLACK = timedelta(minutes=1)


class CountingRepository(InMemorySandboxSessionRepository):
    def __init__(self) -> None:
        super().__init__()
        self.saves = 0

    def save(self, session: SandboxSession) -> None:
        self.saves += 1
        super().save(session)


@pytest.fixture
def world() -> World:
    fresh = World.fresh()
    fresh.repository = CountingRepository()
    return fresh


def replica(world: World, slack: timedelta = SLACK) -> ExecuteCode:
    """One service replica's use case; replicas share only the store (and the locker)."""
    return ExecuteCode(
        repository=world.repository,
        locker=world.locker,
        runtime=world.runtime,
        clock=world.clock,
        logger=world.logger,
        ttl=TTL,
        max_lifetime=MAX_LIFETIME * 10,
        renew_slack=slack,
    )


def run(usecase: ExecuteCode) -> None:
    usecase.execute(ExecuteCodeCommand(CHAT, ExecutionRequest(code="print(1)")))


def sweep(world: World) -> list[SandboxSession]:
    return CleanupExpiredSandboxes(
        world.repository, world.locker, world.runtime, world.clock, world.logger
    ).execute()


def saves(world: World) -> int:
    assert isinstance(world.repository, CountingRepository)
    return world.repository.saves


def test_messages_within_the_slack_are_not_written(world: World) -> None:
    usecase = replica(world)
    run(usecase)  # created (with the slack already): one write, none for the renewal
    written = saves(world)
    assert written == 1

    for _ in range(5):  # 50 s, within the slack
        world.clock.advance(timedelta(seconds=10))
        run(usecase)

    assert saves(world) == written
    stored = world.repository.get_active_by_chat_id(CHAT)
    assert stored is not None and stored.expires_at >= world.clock.now() + TTL


def test_a_busy_chat_is_written_about_once_per_slack(world: World) -> None:
    usecase = replica(world)
    run(usecase)
    written = saves(world)

    for _ in range(60):  # 10 minutes, a message every 10 s
        world.clock.advance(timedelta(seconds=10))
        run(usecase)

    # Written when the stored deadline falls short of now + ttl: every 70 s from the start
    # (the 60 s slack rounded up to the 10 s message step; a new sandbox has the slack already).
    assert saves(world) - written == 8


def test_without_slack_every_message_is_written(world: World) -> None:
    usecase = replica(world, slack=timedelta(0))
    run(usecase)
    written = saves(world)
    for _ in range(3):
        world.clock.advance(timedelta(seconds=10))
        run(usecase)
    assert saves(world) - written == 3


@pytest.mark.parametrize("gap_s", [0, 1, 25, 59, 60, 61, 119, 200])
def test_the_sweep_never_removes_a_sandbox_used_within_its_ttl_on_any_replica(
    world: World, gap_s: int
) -> None:
    # Messages alternate between two replicas; the sweep (a third) runs just before the TTL
    # since the last message has passed, and then at the TTL plus the slack.
    replicas = [replica(world), replica(world)]
    for index in range(8):
        run(replicas[index % 2])
        world.clock.advance(timedelta(seconds=gap_s))
    world.clock.advance(TTL - timedelta(seconds=gap_s) - timedelta(microseconds=1))

    assert sweep(world) == []

    world.clock.advance(SLACK + timedelta(microseconds=1))
    assert len(sweep(world)) == 1


def test_a_negative_slack_is_refused(world: World) -> None:
    with pytest.raises(ValueError, match="renew_slack"):
        replica(world, slack=-SLACK)


def test_renew_after_an_execute_never_moves_the_deadline_back(world: World) -> None:
    usecase = replica(world)
    run(usecase)
    world.clock.advance(timedelta(seconds=10))
    run(usecase)  # stored: now + ttl + slack
    stored = world.repository.get_active_by_chat_id(CHAT)
    assert stored is not None

    renewed = RenewSandbox(world.repository, world.locker, world.clock, world.logger, TTL).execute(
        CHAT
    )

    assert renewed.expires_at == stored.expires_at > world.clock.now() + TTL
