"""WorkerThreads: results and errors come back on the loop; close cancels what has not run."""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial

import pytest

from entrypoint.application.threads import WorkerThreads


def test_results_and_errors_come_back_and_threads_are_reused() -> None:
    threads = WorkerThreads(2, "test")
    names: set[str] = set()

    def where() -> str:
        names.add(threading.current_thread().name)
        return "done"

    def boom() -> None:
        raise ValueError("boom")

    async def scenario() -> list[str]:
        results = [await threads.submit(where) for _ in range(20)]
        with pytest.raises(ValueError, match="boom"):
            await threads.submit(boom)
        return results

    try:
        assert asyncio.run(scenario()) == ["done"] * 20
    finally:
        threads.close()
    # One call at a time: the first thread was idle for every later call.
    assert len(names) == 1 and threading.main_thread().name not in names


def test_at_most_max_workers_run_and_close_cancels_the_waiting_ones() -> None:
    threads = WorkerThreads(2, "test")
    gate = threading.Event()
    running: list[int] = []

    def hold(index: int) -> int:
        running.append(index)
        gate.wait(5)
        return index

    async def scenario() -> tuple[list[int], bool, list[int]]:
        futures = [threads.submit(partial(hold, i)) for i in range(4)]
        await asyncio.sleep(0.2)
        started = sorted(running)
        threads.close()
        gate.set()
        await asyncio.sleep(0.1)
        done = [f.result() for f in futures[:2] if f.done() and not f.cancelled()]
        return started, all(f.cancelled() for f in futures[2:]), done

    started, cancelled, done = asyncio.run(scenario())
    assert started == [0, 1]
    assert cancelled
    assert sorted(done) == [0, 1]


def test_a_backlog_runs_in_arrival_order_when_every_thread_is_busy() -> None:
    threads = WorkerThreads(1, "test-backlog")
    order: list[int] = []

    async def scenario() -> list[int]:
        return list(
            await asyncio.gather(*(threads.submit(partial(_note, order, i)) for i in range(6)))
        )

    try:
        assert asyncio.run(scenario()) == list(range(6))
    finally:
        threads.close()
    assert order == list(range(6))


def test_the_thread_idle_last_takes_the_next_call() -> None:
    threads = WorkerThreads(3, "test-lifo")
    both = threading.Barrier(2, timeout=5)
    names: list[str] = []

    def meet(index: int) -> str:
        both.wait()  # two threads at once
        if index == 1:
            time.sleep(0.05)  # this one goes idle last
        return threading.current_thread().name

    def where() -> str:
        names.append(threading.current_thread().name)
        return names[-1]

    async def scenario() -> str:
        first = threads.submit(partial(meet, 0))
        last = threads.submit(partial(meet, 1))
        await first
        last_name = await last
        for _ in range(5):
            await threads.submit(where)
        return last_name

    try:
        last_name = asyncio.run(scenario())
    finally:
        threads.close()
    assert names == [last_name] * 5


def test_close_ends_the_idle_threads() -> None:
    threads = WorkerThreads(3, "test-close-idle")

    async def scenario() -> None:
        await asyncio.gather(*(threads.submit(partial(time.sleep, 0.05)) for _ in range(3)))

    asyncio.run(scenario())
    assert _alive("test-close-idle") == 3
    threads.close()
    deadline = time.monotonic() + 5
    while _alive("test-close-idle") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _alive("test-close-idle") == 0
    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(_submit_after_close(threads))


async def _submit_after_close(threads: WorkerThreads) -> None:
    await threads.submit(lambda: None)


def _note(order: list[int], index: int) -> int:
    order.append(index)
    return index


def _alive(prefix: str) -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith(prefix + "_"))


def test_a_worker_carries_its_name_in_the_os_too() -> None:
    # bench/common.py tells the workers' CPU from the loop's and grpc's by this name.
    threads = WorkerThreads(1, "sandboxd")

    def os_name() -> str:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", encoding="utf-8") as comm:
            return comm.read().strip()

    async def scenario() -> str:
        return await threads.submit(os_name)

    try:
        assert asyncio.run(scenario()) == "sandboxd_1"
    finally:
        threads.close()
