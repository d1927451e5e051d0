"""bench.common.thread_usage: per-execute CPU and context switches by thread group."""

from __future__ import annotations

import os
import threading

from bench.common import thread_usage, thread_usage_per_execute


def test_a_named_thread_is_counted_in_its_group_and_the_main_thread_as_the_loop() -> None:
    ready, done = threading.Event(), threading.Event()

    def sleeper() -> None:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
            comm.write("sandboxd_7")
        ready.set()
        for _ in range(20):  # twenty sleeps: twenty voluntary context switches at least
            done.wait(0.001)

    before = thread_usage(os.getpid())
    worker = threading.Thread(target=sleeper)
    worker.start()
    ready.wait()
    worker.join(timeout=0.001)
    during = thread_usage(os.getpid())
    worker.join()
    assert "loop" in before and "sandboxd" in during
    per = thread_usage_per_execute(before, during, executes=1)
    assert per["sandboxd"]["switches"] >= 1
    assert set(per["sandboxd"]) == {"cpu_ms", "switches"}
