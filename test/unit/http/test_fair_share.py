"""FairShare: running executions shared between keys; ChatTurns: one chat's messages in order."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import pytest

from entrypoint.application.fair_share import ChatTurns, FairShare


async def _enter(share: FairShare, key: str, stack: AsyncExitStack) -> None:
    await stack.enter_async_context(share.place(key))


def _try(share: FairShare, key: str, stack: AsyncExitStack) -> asyncio.Task[None]:
    return asyncio.ensure_future(_enter(share, key, stack))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_key_alone_is_not_held_back() -> None:
    async def scenario() -> int:
        share = FairShare(floor=2)
        async with AsyncExitStack() as stack:
            for _ in range(10):
                await asyncio.wait_for(_enter(share, "flood", stack), 1)
            return share.running_of("flood")

    assert asyncio.run(scenario()) == 10


def test_a_flood_is_held_to_the_floor_and_the_other_key_does_not_wait() -> None:
    async def scenario() -> tuple[int, int, int]:
        share = FairShare(floor=2, recent_s=0)
        async with AsyncExitStack() as good, AsyncExitStack() as flood:
            await _enter(share, "good", good)
            tasks = [_try(share, "flood", flood) for _ in range(5)]
            await _settle()
            held, waiting = share.running_of("flood"), share.waiting
            await asyncio.wait_for(_enter(share, "good", good), 1)  # not behind the flood
            await good.aclose()  # the good key is done: the flood runs alone again
            await asyncio.wait_for(asyncio.gather(*tasks), 1)
            return held, waiting, share.running_of("flood")

    assert asyncio.run(scenario()) == (2, 3, 5)


def test_a_key_may_run_as_many_as_the_busiest_other_key() -> None:
    async def scenario() -> int:
        share = FairShare(floor=1, recent_s=0)
        async with AsyncExitStack() as good, AsyncExitStack() as flood:
            for _ in range(3):
                await _enter(share, "good", good)
            tasks = [_try(share, "flood", flood) for _ in range(5)]
            await _settle()
            running = share.running_of("flood")
            await good.aclose()
            await asyncio.gather(*tasks)
            return running

    assert asyncio.run(scenario()) == 3


def test_a_key_seen_within_recent_s_still_holds_a_flood_to_the_floor() -> None:
    """A well-behaved key has nothing running between its messages: the flood stays capped."""
    now = [100.0]

    async def scenario() -> tuple[int, int, int]:
        share = FairShare(floor=1, recent_s=1.0, clock=lambda: now[0])
        async with share.place("good"):
            pass  # one message, done: "good" has nothing running now
        now[0] += 0.5
        async with AsyncExitStack() as flood:
            tasks = [_try(share, "flood", flood) for _ in range(4)]
            await _settle()
            held, waiting = share.running_of("flood"), share.waiting
            now[0] += 1.0  # "good" is forgotten: the flood runs alone again
            async with share.place("flood"):
                alone = share.running_of("flood")
            await asyncio.wait_for(asyncio.gather(*tasks), 1)
            return held, waiting, alone

    # (Without the memory the flood would run all 4 at once.)
    assert asyncio.run(scenario()) == (1, 3, 5)


def test_a_flood_held_only_by_a_recent_key_runs_when_that_time_is_up() -> None:
    """No release of its own is needed: the fair share looks again when recent_s has passed."""

    async def scenario() -> tuple[int, int]:
        share = FairShare(floor=1, recent_s=0.05)
        async with AsyncExitStack() as flood:
            await _enter(share, "flood", flood)
            async with share.place("good"):
                pass
            tasks = [_try(share, "flood", flood) for _ in range(3)]
            await _settle()
            held = share.running_of("flood")
            await asyncio.wait_for(asyncio.gather(*tasks), 1)  # none of the flood's finished
            return held, share.running_of("flood")

    assert asyncio.run(scenario()) == (1, 4)


def test_an_outdated_memory_does_not_keep_waking_the_fair_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A waiter held back by another key's running executions waits for their release; a key
    seen before it ran again must not leave a memory that, once outdated, arms a timer looking
    again every millisecond."""

    async def scenario() -> int:
        share = FairShare(floor=1, recent_s=0.01)
        async with share.place("flood"):
            pass  # "flood" remembered as seen...
        grants = 0
        grant = share._grant

        def counted() -> None:
            nonlocal grants
            grants += 1
            grant()

        monkeypatch.setattr(share, "_grant", counted)
        async with AsyncExitStack() as good, AsyncExitStack() as flood:
            await _enter(share, "flood", flood)  # ...and running again
            await _enter(share, "good", good)
            waiter = _try(share, "flood", flood)  # capped by good's running one
            await asyncio.sleep(0.1)  # ten times recent_s
            looked = grants
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            return looked

    assert asyncio.run(scenario()) <= 3


def test_recent_s_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        FairShare(floor=1, recent_s=-1)


def test_a_freed_place_goes_to_the_key_running_fewest() -> None:
    async def scenario() -> list[str]:
        share = FairShare(floor=1)
        started: list[str] = []

        async def run(key: str, release: asyncio.Event) -> None:
            async with share.place(key):
                started.append(key)
                await release.wait()

        a_done, b_done, later = asyncio.Event(), asyncio.Event(), asyncio.Event()
        first_a = asyncio.ensure_future(run("a", a_done))
        first_b = asyncio.ensure_future(run("b", b_done))
        await _settle()
        queued = [asyncio.ensure_future(run(key, later)) for key in ("a", "a", "c")]
        await _settle()
        a_done.set()  # a frees a place: c (running none) goes before a's second
        await first_a
        await _settle()
        b_done.set()
        later.set()
        await asyncio.gather(first_b, *queued)
        return started

    assert asyncio.run(scenario())[:3] == ["a", "b", "c"]


def test_a_cancelled_waiter_leaves_no_trace() -> None:
    async def scenario() -> tuple[int, int]:
        share = FairShare(floor=1)
        async with AsyncExitStack() as good, AsyncExitStack() as flood:
            await _enter(share, "good", good)
            await _enter(share, "flood", flood)
            waiter = _try(share, "flood", flood)
            await _settle()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            return share.waiting, share.running

    assert asyncio.run(scenario()) == (0, 2)


def test_a_chat_takes_its_turns_in_arrival_order() -> None:
    async def scenario() -> list[int]:
        turns = ChatTurns()
        chat = uuid.uuid4()
        order: list[int] = []

        async def message(number: int) -> None:
            async with turns.turn(chat):
                order.append(number)
                await asyncio.sleep(0)

        await asyncio.gather(*(message(number) for number in range(6)))
        return order

    assert asyncio.run(scenario()) == list(range(6))


def test_a_cancelled_turn_passes_it_on() -> None:
    async def scenario() -> bool:
        turns = ChatTurns()
        chat = uuid.uuid4()
        release = asyncio.Event()

        async def holder() -> None:
            async with turns.turn(chat):
                await release.wait()

        first = asyncio.ensure_future(holder())
        await _settle()
        second = asyncio.ensure_future(holder())
        await _settle()
        second.cancel()
        release.set()
        await first
        # The third gets its turn at once: neither the done nor the cancelled one is ahead.
        async with asyncio.timeout(1), turns.turn(chat):
            return True

    assert asyncio.run(scenario())


def test_a_turn_taken_at_once_holds_off_the_waiting_ones_until_left() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        turns = ChatTurns()
        chat = uuid.uuid4()
        token = turns.try_take(chat)
        second = turns.try_take(chat)

        async def waiter() -> None:
            async with turns.turn(chat):
                pass

        waiting = asyncio.ensure_future(waiter())
        await _settle()
        held_off = not waiting.done()
        assert token is not None
        turns.leave(chat, token)
        await asyncio.wait_for(waiting, 1)
        return second is None, held_off, turns.try_take(chat) is not None

    assert asyncio.run(scenario()) == (True, True, True)
