from __future__ import annotations

import threading
import time
from uuid import UUID

import pytest

from domain.errors import LockTimeoutError
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker

CHAT = UUID("11111111-1111-1111-1111-111111111111")
OTHER = UUID("22222222-2222-2222-2222-222222222222")


def _wait_for_users(locker, chat, count, timeout=5.0) -> None:
    deadline = time.monotonic() + timeout
    while locker.queued(chat) != count:
        assert time.monotonic() < deadline
        time.sleep(0.001)


def test_waiters_get_the_lock_in_arrival_order() -> None:
    locker = ProcessLocalSandboxLifecycleLocker()
    order: list[int] = []

    def worker(index: int) -> None:
        with locker.lock(CHAT):
            order.append(index)

    threads = []
    with locker.lock(CHAT):
        for index in range(16):
            thread = threading.Thread(target=worker, args=(index,))
            thread.start()
            threads.append(thread)
            _wait_for_users(locker, CHAT, index + 2)
    for thread in threads:
        thread.join(5)
    assert order == list(range(16))


def test_different_chats_do_not_block_each_other() -> None:
    locker = ProcessLocalSandboxLifecycleLocker()
    entered = threading.Event()

    def other_chat() -> None:
        with locker.lock(OTHER):
            entered.set()

    with locker.lock(CHAT):
        thread = threading.Thread(target=other_chat)
        thread.start()
        assert entered.wait(2)
    thread.join(2)


def test_a_bounded_wait_times_out_without_blocking_later_waiters() -> None:
    locker = ProcessLocalSandboxLifecycleLocker(timeout_s=0.05)
    with locker.lock(CHAT), pytest.raises(LockTimeoutError), locker.lock(CHAT):
        pass
    with locker.lock(CHAT):
        assert locker.queued(CHAT) == 1


def test_an_exception_releases_the_lock_and_entries_do_not_pile_up() -> None:
    locker = ProcessLocalSandboxLifecycleLocker()
    with pytest.raises(RuntimeError), locker.lock(CHAT):
        raise RuntimeError("boom")
    for index in range(1000):
        with locker.lock(UUID(int=index)):
            pass
    assert locker.held_chat_count() == 0
    with locker.lock(CHAT):
        assert locker.held_chat_count() == 1
