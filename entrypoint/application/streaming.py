"""Streaming, bounded: from a runtime's output callback (a worker thread) to an async sender.

User code may flush a byte at a time, and a client may stop reading, so neither the number of
frames nor the buffered bytes may follow what the code writes:
- the worker thread appends to a buffer under a lock and wakes the event loop at most once per
  take (one pending callback, never one per chunk);
- the sender takes everything buffered at once, at most every ``coalesce_s`` (sooner once a
  whole frame is waiting, so that fast output does not fill the buffer of a client that does
  read), merged into one frame per run of one stream (split at ``max_frame_chars``);
- when more than ``max_buffered_chars`` wait (the sender is stuck on a client that does not
  read), the buffer is dropped and the relay is marked overflowed: the stream ends for that
  client, while the execution runs on and its result is recorded as always.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable
from typing import NoReturn
from uuid import UUID

from domain.execution import OutputChunk, OutputStream
from entrypoint.errors import SlowClientError
from usecase.execute import CodeExecution
from usecase.ports import Logger

StreamEvent = OutputChunk | CodeExecution
# Streamed output: frames gather for up to this long, and are at most this big.
STREAM_COALESCE_S = 0.02
STREAM_FRAME_CHARS = 64 * 1024


class OutputRelay:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_buffered_chars: int,
        max_frame_chars: int,
        coalesce_s: float,
    ) -> None:
        self._loop = loop
        self._max_buffered = max_buffered_chars
        self._max_frame = max_frame_chars
        self._coalesce_s = coalesce_s
        self._lock = threading.Lock()
        self._runs: list[tuple[OutputStream, list[str]]] = []
        self._buffered = 0
        self._wake_scheduled = False
        self._urgent_scheduled = False
        self._overflowed = False
        self._closed = False
        self._last_take = 0.0
        # Loop-thread only.
        self._wakeup = asyncio.Event()
        self._urgent = asyncio.Event()
        self.dropped = asyncio.Event()

    # -- the worker thread ---------------------------------------------------------------------

    def put(self, chunk: OutputChunk) -> None:
        with self._lock:
            if self._overflowed or not chunk.data:
                return
            display = chunk.stream is OutputStream.DISPLAY
            # Rich outputs are bounded by the agent (count and total size): not counted here,
            # never merged or split.
            self._buffered += 0 if display else len(chunk.data)
            if self._buffered > self._max_buffered:
                self._overflowed = True
                self._runs.clear()
                self._buffered = 0
                self._loop.call_soon_threadsafe(self.dropped.set)
            elif not display and self._runs and self._runs[-1][0] is chunk.stream:
                self._runs[-1][1].append(chunk.data)
            else:
                self._runs.append((chunk.stream, [chunk.data]))
            wake = not self._wake_scheduled
            urgent = self._buffered >= self._max_frame and not self._urgent_scheduled
            self._wake_scheduled = True
            self._urgent_scheduled |= urgent
        if wake:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        if urgent:
            self._loop.call_soon_threadsafe(self._urgent.set)

    # -- the event loop ------------------------------------------------------------------------

    @property
    def overflowed(self) -> bool:
        return self._overflowed

    def close(self) -> None:
        """No more output will come (the execution is done)."""
        self._closed = True
        self._wakeup.set()

    async def take(self) -> list[OutputChunk] | None:
        """The next frames (merged), or None when closed and drained or overflowed."""
        while True:
            with self._lock:
                runs, self._runs = self._runs, []
                self._buffered = 0
                self._wake_scheduled = False
                self._urgent_scheduled = False
                self._wakeup.clear()
                self._urgent.clear()
            if self._overflowed:
                return None
            if runs:
                return self._frames(runs)
            if self._closed:
                return None
            await self._wakeup.wait()
            # Let a burst gather: at most one take per coalescing window.
            wait = self._last_take + self._coalesce_s - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), timeout=wait)
            self._last_take = time.monotonic()

    def _frames(self, runs: list[tuple[OutputStream, list[str]]]) -> list[OutputChunk]:
        frames: list[OutputChunk] = []
        for stream, parts in runs:
            if stream is OutputStream.DISPLAY:
                frames.extend(OutputChunk(stream, part) for part in parts)
                continue
            data = "".join(parts)
            for start in range(0, len(data), self._max_frame):
                frames.append(OutputChunk(stream, data[start : start + self._max_frame]))
        return frames


class ExecutionStream:
    """One streamed execution: ``async for`` gives output frames then the CodeExecution.

    Transports send each frame through ``deliver``, which gives up on a client whose send stays
    blocked while the relay's buffer fills (SlowClientError; the caller drops the connection).
    """

    def __init__(
        self,
        relay: OutputRelay,
        task: asyncio.Future[CodeExecution],
        logger: Logger,
        transport: str,
        chat_id: UUID,
    ) -> None:
        self._relay = relay
        self._task = task
        self._logger = logger
        self._transport = transport
        self._chat_id = chat_id
        self._frames: list[OutputChunk] = []
        self._finished = False

    def __aiter__(self) -> ExecutionStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._finished:
            raise StopAsyncIteration
        if not self._frames:
            frames = await self._relay.take()
            if frames is None:
                if self._relay.overflowed:
                    self._drop()
                self._finished = True
                return await asyncio.shield(self._task)
            self._frames = frames
        return self._frames.pop(0)

    async def deliver(self, sending: Awaitable[None]) -> None:
        """Await a transport's send; raise SlowClientError if the buffer overflows first."""
        send_task = asyncio.ensure_future(sending)
        if self._relay.dropped.is_set():
            send_task.cancel()
            self._drop()
        dropped = asyncio.ensure_future(self._relay.dropped.wait())
        try:
            await asyncio.wait({send_task, dropped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            dropped.cancel()
        if send_task.done():
            send_task.result()
            return
        send_task.cancel()
        self._drop()

    async def aclose(self) -> None:
        if not self._task.done():
            # The caller went away; the execution still finishes (its slot stays held).
            self._task.add_done_callback(consume_result)

    def _drop(self) -> NoReturn:
        self._finished = True
        self._task.add_done_callback(consume_result)
        self._logger.warning(
            "stream_client_dropped",
            {"chat_id": str(self._chat_id), "transport": self._transport},
        )
        raise SlowClientError("the client did not read its output fast enough")


def consume_result(task: asyncio.Future[CodeExecution]) -> None:
    """Mark the outcome of an execution nobody waits for any more as seen."""
    if not task.cancelled():
        task.exception()
