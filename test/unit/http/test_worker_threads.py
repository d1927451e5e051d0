"""WorkerThreads: results and errors come back on the loop; close cancels what has not run."""

from __future__ import annotations

import asyncio
import threading
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
