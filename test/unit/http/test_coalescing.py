"""The coalescing transport: a callback's writes leave as one write, nothing is held past it,
and closing sends what was written first."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from entrypoint.http.coalescing import CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", None))

    def abort(self) -> None:
        self.closing = True
        self.calls.append(("abort", None))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def on_a_loop(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def coalescing() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


@on_a_loop
async def test_writes_of_one_callback_leave_as_one_write_right_after_it() -> None:
    transport, inner = coalescing()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(memoryview(b"body"))
    assert inner.calls == []
    assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
    await asyncio.sleep(0)
    assert inner.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody")]


@on_a_loop
async def test_a_streamed_chunk_is_not_held_for_the_next_one() -> None:
    transport, inner = coalescing()
    transport.write(b"head")
    await asyncio.sleep(0)
    transport.write(b"chunk")
    await asyncio.sleep(0)
    assert inner.calls == [("write", b"head"), ("write", b"chunk")]


@on_a_loop
async def test_close_sends_what_was_written_first_and_abort_drops_it() -> None:
    transport, inner = coalescing()
    transport.write(b"last")
    transport.close()
    await asyncio.sleep(0)
    assert inner.calls == [("write", b"last"), ("close", None)]

    transport, inner = coalescing()
    transport.write(b"dropped")
    transport.abort()
    await asyncio.sleep(0)
    assert inner.calls == [("abort", None)]


@on_a_loop
async def test_anything_else_is_the_transport_s_own() -> None:
    transport, _ = coalescing()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
    assert not transport.is_closing()
