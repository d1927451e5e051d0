from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from domain.errors import CodeTooLargeError, InvalidTimeoutError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult, Language, OutputChunk
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from testkit.world import CHAT, MAX_LIFETIME, TTL, World
from usecase.execute import ExecuteCode, ExecuteCodeCommand, ExecutionLimits


def executor(world: World, locker=None, limits=None) -> ExecuteCode:
    return ExecuteCode(
        repository=world.repository,
        locker=locker or world.locker,
        runtime=world.runtime,
        clock=world.clock,
        logger=world.logger,
        ttl=TTL,
        max_lifetime=MAX_LIFETIME,
        limits=limits,
    )


def run(usecase: ExecuteCode, code: str = "print(1)", **kwargs):
    return usecase.execute(ExecuteCodeCommand(CHAT, ExecutionRequest(code=code, **kwargs)))


def test_first_message_creates_the_sandbox_and_runs_the_code(world: World) -> None:
    execution = run(executor(world), "x = 1")

    assert execution.result.stdout == "x = 1"
    assert execution.result.sandbox_replaced is False
    assert world.runtime.executed == [(CHAT, "x = 1")]
    assert world.repository.get_active_by_chat_id(CHAT) == execution.session
    assert world.logger.events() == ["sandbox_created", "code_executed"]


def test_later_messages_reuse_the_sandbox(world: World) -> None:
    usecase = executor(world)
    first = run(usecase)
    second = run(usecase)

    assert second.session.session_id == first.session.session_id
    assert len(world.runtime.create_calls) == 1


def test_a_message_in_a_reused_sandbox_is_one_info_event(world: World) -> None:
    usecase = executor(world)
    run(usecase)
    before = len(world.logger.messages)

    run(usecase)

    logged = [(level, name) for level, name, _ in world.logger.messages[before:]]
    assert logged == [("debug", "sandbox_reused"), ("info", "code_executed")]


def test_each_execution_slides_the_idle_deadline(world: World) -> None:
    usecase = executor(world)
    run(usecase)
    world.clock.advance(timedelta(minutes=4))

    execution = run(usecase)

    assert execution.session.expires_at == world.clock.now() + TTL
    assert execution.session.last_activity_at == world.clock.now()
    assert world.repository.get_active_by_chat_id(CHAT) == execution.session


def test_the_deadline_never_passes_the_maximum_lifetime(world: World) -> None:
    usecase = executor(world)
    created_at = run(usecase).session.created_at
    for _ in range(3):  # at minute 9, now + ttl (14) passes the 12-minute cap
        world.clock.advance(timedelta(minutes=3))
        execution = run(usecase)

    assert execution.session.expires_at == created_at + MAX_LIFETIME
    assert len(world.runtime.create_calls) == 1


def test_a_sandbox_past_its_maximum_lifetime_is_replaced_silently(world: World) -> None:
    usecase = executor(world)
    first = run(usecase).session
    for _ in range(4):
        world.clock.advance(timedelta(minutes=4))
        execution = run(usecase)

    assert execution.session.session_id != first.session_id
    assert execution.result.sandbox_replaced is False


def test_a_sandbox_dying_mid_run_is_replaced_once_and_the_result_says_so(world: World) -> None:
    usecase = executor(world)
    first = run(usecase).session
    world.runtime.die_on_execute.add(first.container_id)

    execution = run(usecase, "print(2)")

    assert execution.session.session_id != first.session_id
    assert execution.result.sandbox_replaced is True
    assert execution.result.state_lost is True
    assert execution.result.stdout == "print(2)"
    assert world.repository.get(first.session_id) is None
    assert world.repository.get_active_by_chat_id(CHAT) == execution.session
    assert len(world.runtime.create_calls) == 2


def test_a_replacement_that_dies_too_is_not_replaced_again(world: World) -> None:
    usecase = executor(world)
    run(usecase)
    world.runtime.die_on_every_execute = True

    with pytest.raises(SandboxGoneError):
        run(usecase)

    assert len(world.runtime.create_calls) == 2  # the original and one replacement, no loop


def test_a_session_marked_dead_is_replaced_and_reports_lost_state(world: World) -> None:
    usecase = executor(world)
    first = run(usecase).session
    world.repository.save(first.marked_dead())

    execution = run(usecase)

    assert execution.result.sandbox_replaced is True
    assert execution.session.session_id != first.session_id


def test_code_over_the_size_limit_is_refused_before_anything_happens(world: World) -> None:
    usecase = executor(world, limits=ExecutionLimits(max_code_bytes=8))

    with pytest.raises(CodeTooLargeError):
        run(usecase, "é" * 5)  # 10 bytes in UTF-8, 5 characters

    assert world.locker.chat_ids == []
    assert world.runtime.create_calls == []


@pytest.mark.parametrize("timeout_s", [0, -1, 301])
def test_timeouts_outside_the_allowed_range_are_refused(world: World, timeout_s: float) -> None:
    with pytest.raises(InvalidTimeoutError):
        run(executor(world), timeout_s=timeout_s)
    assert world.runtime.create_calls == []


def test_output_chunks_reach_the_callers_sink(world: World) -> None:
    chunks: list[OutputChunk] = []
    executor(world).execute(
        ExecuteCodeCommand(CHAT, ExecutionRequest("hello", Language.SHELL)), on_output=chunks.append
    )
    assert [c.data for c in chunks] == ["hello"]


def test_messages_of_one_chat_run_one_at_a_time_in_arrival_order(world: World) -> None:
    locker = ProcessLocalSandboxLifecycleLocker()
    usecase = executor(world, locker=locker)
    run(usecase, "warm-up")
    running = 0
    overlaps = 0
    order: list[str] = []
    state_lock = threading.Lock()
    original_execute = world.runtime.execute

    def slow_execute(container_id, request, on_output=None) -> ExecutionResult:
        nonlocal running, overlaps
        with state_lock:
            running += 1
            overlaps += running > 1
            order.append(request.code)
        time.sleep(0.01)
        with state_lock:
            running -= 1
        return original_execute(container_id, request, on_output)

    world.runtime.execute = slow_execute  # type: ignore[method-assign]
    threads = []
    # Hold the chat's lock while the threads line up, so that each one is queued before the next
    # starts; their arrival order is then known.
    with locker.lock(CHAT):
        for index in range(8):
            thread = threading.Thread(target=run, args=(usecase, f"message-{index}"))
            thread.start()
            threads.append(thread)
            _wait_until(lambda: locker.queued(CHAT) == index + 2)
    for thread in threads:
        thread.join(timeout=10)

    assert overlaps == 0
    assert order == [f"message-{index}" for index in range(8)]


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)
