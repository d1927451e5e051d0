"""Worker threads for the blocking use cases, handing results straight to the event loop.

What ``loop.run_in_executor`` does, without concurrent.futures in between: no second future
(with its Condition) per call and no chaining of one future to the other. Threads are started on
demand, up to ``max_workers``, and then kept.

A call wakes exactly one thread: the most recently idle one (its caches are warm), through a
lock of its own. A shared queue.SimpleQueue woke two: its get() releases the queue's lock again
after taking a job, which wakes a second waiting thread only for it to find the queue empty,
take the GIL from the others and sleep again. strace counted about ten futex calls and a
context switch per execute for that, on every execute.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class _Worker:
    """One thread's mailbox: the job it is given and the lock it sleeps on until then."""

    __slots__ = ("job", "wake")

    def __init__(self, job: _Job | None) -> None:
        self.job = job
        self.wake = threading.Lock()
        self.wake.acquire()  # held while there is nothing to do; released to hand a job over


class WorkerThreads:
    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._mutex = threading.Lock()
        self._idle: list[_Worker] = []  # last idle on top
        self._backlog: deque[_Job] = deque()  # jobs while every thread is busy
        self._threads = 0
        self._closed = False

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` on a worker thread; the future resolves on the calling event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job: _Job = (loop, future, fn)
        woken = started = None
        with self._mutex:
            if self._closed:
                raise RuntimeError("the worker threads are shut down")
            if self._idle:
                woken = self._idle.pop()
                woken.job = job
            elif self._threads < self._max_workers:
                self._threads += 1
                started = _Worker(job)
            else:
                self._backlog.append(job)
        if woken is not None:
            woken.wake.release()
        elif started is not None:
            threading.Thread(
                target=self._work,
                args=(started,),
                name=f"{self._name}_{self._threads}",
                daemon=True,
            ).start()
        return future

    def close(self) -> None:
        """Cancel what has not started; threads finish what they run and then end."""
        with self._mutex:
            self._closed = True
            backlog, self._backlog = self._backlog, deque()
            idle, self._idle = self._idle, []
        for loop, future, _ in backlog:
            _hand_back(loop, _cancel, future)
        for worker in idle:
            worker.job = None
            worker.wake.release()

    def _work(self, worker: _Worker) -> None:
        _name_os_thread(threading.current_thread().name)
        job = worker.job
        while job is not None:
            loop, future, fn = job
            settle: Callable[[asyncio.Future[Any], Any], None]
            try:
                result = fn()
            except BaseException as error:
                settle, value = _fail, error
            else:
                settle, value = _succeed, result
            # The next job, or idle before the caller hears of this one: its next call must find
            # this thread idle, not start another.
            idle = False
            with self._mutex:
                if self._backlog:
                    job = self._backlog.popleft()
                elif self._closed:
                    job = None
                else:
                    job = worker.job = None
                    self._idle.append(worker)
                    idle = True
            _hand_back(loop, settle, future, value)
            del loop, future, fn, value  # drop references before waiting for the next job
            if idle:
                worker.wake.acquire()
                job = worker.job


def _name_os_thread(name: str) -> None:
    """The thread's name for the OS too (Linux keeps 15 bytes), so that `top -H` and
    /proc/PID/task/*/comm tell the workers' CPU and context switches from the event loop's and
    grpc's (bench/common.py reads them)."""
    with (
        contextlib.suppress(OSError),
        open(f"/proc/self/task/{threading.get_native_id()}/comm", "w", encoding="utf-8") as comm,
    ):
        comm.write(name[:15])


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
