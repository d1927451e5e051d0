"""Worker threads for the blocking use cases, handing results straight to the event loop.

What ``loop.run_in_executor`` does, without concurrent.futures in between: no second future
(with its Condition) per call and no chaining of one future to the other. A call costs one
queue put, a thread's wake-up and one ``call_soon_threadsafe`` back. Threads are started on
demand, up to ``max_workers``, and then kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class WorkerThreads:
    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._mutex = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` on a worker thread; the future resolves on the calling event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._mutex:
            if self._closed:
                raise RuntimeError("the worker threads are shut down")
            start = self._idle == 0 and self._threads < self._max_workers
            if start:
                self._threads += 1
            elif self._idle:
                self._idle -= 1
            self._jobs.put((loop, future, fn))
        if start:
            threading.Thread(
                target=self._work, name=f"{self._name}_{self._threads}", daemon=True
            ).start()
        return future

    def close(self) -> None:
        """Cancel what has not started; threads finish what they run and then end."""
        with self._mutex:
            self._closed = True
            threads = self._threads
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                loop, future, _ = job
                loop.call_soon_threadsafe(_cancel, future)
        for _ in range(threads):
            self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, future, fn = job
            settle: Callable[[asyncio.Future[Any], Any], None]
            try:
                result = fn()
            except BaseException as error:
                settle, value = _fail, error
            else:
                settle, value = _succeed, result
            # Idle before the caller hears of it: its next call must not start another thread.
            with self._mutex:
                self._idle += 1
            _hand_back(loop, settle, future, value)
            del job, future, fn, value  # drop references before waiting for the next job


def _hand_back(loop: asyncio.AbstractEventLoop, settle: Any, *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle, *args)


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _cancel(future: asyncio.Future[Any]) -> None:
    future.cancel()
