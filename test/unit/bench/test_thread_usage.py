"""bench.common.thread_usage: per-execute CPU and context switches by thread group."""

from __future__ import annotations

import os
import threading
import time

from bench.common import thread_usage, thread_usage_per_execute


def test_a_named_thread_is_counted_in_its_group_and_the_main_thread_as_the_loop() -> None:
    slept: list[int] = []
    done = threading.Event()

    def sleeper() -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write("benchprobe_7")
        while not done.wait(0.001):  # each wait blocks: a voluntary context switch
            slept.append(1)

    before = thread_usage(os.getpid())
    worker = threading.Thread(target=sleeper)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while len(slept) < 5 and time.monotonic() < deadline:
            time.sleep(0.001)
        during = thread_usage(os.getpid())
    finally:
        done.set()
        worker.join()
    assert "loop" in before and "benchprobe" not in before
    per = thread_usage_per_execute(before, during, executes=1)
    assert per["benchprobe"]["switches"] >= 5
    assert set(per["benchprobe"]) == {"cpu_ms", "switches"}
