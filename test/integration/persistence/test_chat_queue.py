"""The in-process FIFO with a bounded wait that the file and PostgreSQL lockers queue on first."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from uuid import uuid4

import pytest

from domain.errors import LockTimeoutError
from repository.chat_queue import TimedFifoChatLock
from repository.file_lock import FileSandboxLifecycleLocker


def test_a_waiter_that_gives_up_leaves_the_queue_and_the_next_one_is_served() -> None:
    queue = TimedFifoChatLock()
    chat_id = uuid4()
    queue.acquire(chat_id, time.monotonic() + 1)
    served = threading.Event()

    def patient() -> None:
        queue.acquire(chat_id, time.monotonic() + 30)
        served.set()
        queue.release(chat_id)

    with pytest.raises(LockTimeoutError):
        queue.acquire(chat_id, time.monotonic() + 0.05)
    thread = threading.Thread(target=patient, daemon=True)
    thread.start()
    time.sleep(0.05)
    assert not served.is_set()
    queue.release(chat_id)
    assert served.wait(10)
    thread.join(10)
    assert queue.held_chat_count() == 0


def test_an_impatient_waiter_in_the_middle_of_the_queue_keeps_the_order_of_the_rest() -> None:
    queue = TimedFifoChatLock()
    chat_id = uuid4()
    order: list[str] = []
    queue.acquire(chat_id, time.monotonic() + 1)

    def waiter(name: str, wait_s: float) -> None:
        try:
            queue.acquire(chat_id, time.monotonic() + wait_s)
        except LockTimeoutError:
            order.append(f"{name} gave up")
            return
        order.append(name)
        queue.release(chat_id)

    threads = []
    for name, wait_s in (("a", 30), ("b", 0.2), ("c", 30)):
        threads.append(threading.Thread(target=waiter, args=(name, wait_s), daemon=True))
        threads[-1].start()
        time.sleep(0.1)  # lets each queue up before the next arrives
    time.sleep(0.5)  # b has given up by now
    queue.release(chat_id)
    for thread in threads:
        thread.join(10)
    assert order == ["b gave up", "a", "c"]
    assert queue.held_chat_count() == 0


def test_one_locker_bounds_the_wait_of_its_own_threads_too(tmp_path: Path) -> None:
    locker = FileSandboxLifecycleLocker(tmp_path / "locks", timeout_s=0.2)
    chat_id = uuid4()
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with locker.lock(chat_id):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert holding.wait(10)
    with pytest.raises(LockTimeoutError), locker.lock(chat_id):
        pass
    release.set()
    thread.join(10)
    with locker.lock(chat_id):
        pass
