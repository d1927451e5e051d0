"""The bounded path from a runtime's output callback (a worker thread) to an async sender.

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

from domain.execution import OutputChunk, OutputStream


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
            self._buffered += len(chunk.data)
            if self._buffered > self._max_buffered:
                self._overflowed = True
                self._runs.clear()
                self._buffered = 0
                self._loop.call_soon_threadsafe(self.dropped.set)
            elif self._runs and self._runs[-1][0] is chunk.stream:
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
        frames = []
        for stream, parts in runs:
            data = "".join(parts)
            for start in range(0, len(data), self._max_frame):
                frames.append(OutputChunk(stream, data[start : start + self._max_frame]))
        return frames
