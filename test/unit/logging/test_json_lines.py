"""The JSON log lines: what operators' log pipelines and the e2e tests read."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

from adapter.logging import ServiceLogger, configure_logging


class _Stream(io.StringIO):
    def isatty(self) -> bool:
        return False


@pytest.fixture
def stream() -> Iterator[_Stream]:
    out = _Stream()
    configure_logging("info", "auto", out)
    yield out
    configure_logging("info", "json")


def lines(stream: _Stream) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_the_component_the_attributes_the_event_level_and_utc_time(stream) -> None:
    ServiceLogger("http").info("http_request", {"status": 200, "duration_ms": 1.5, "ok": True})
    [line] = lines(stream)
    assert list(line) == ["component", "status", "duration_ms", "ok", "event", "level", "timestamp"]
    assert line["component"] == "http" and line["event"] == "http_request"
    assert line["level"] == "info" and line["status"] == 200 and line["ok"] is True
    stamp = str(line["timestamp"])
    assert stamp.endswith("Z") and datetime.fromisoformat(stamp).utcoffset() == timedelta(0)
    # The spelling the e2e tests grep service logs for.
    assert '"event": "http_request"' in stream.getvalue()


def test_below_the_level_nothing_is_written(stream) -> None:
    log = ServiceLogger()
    log.debug("hidden")
    log.warning("shown")
    log.error("shown too")
    assert [line["level"] for line in lines(stream)] == ["warning", "error"]


def test_text_that_looks_like_json_or_newlines_stays_inside_its_line(stream) -> None:
    ServiceLogger().info('a"}\n{"event": "forged"', {"path": 'x"\n{"event": "forged"}'})
    [line] = lines(stream)
    assert line["event"] == 'a"}\n{"event": "forged"'


def test_lines_from_many_threads_stay_whole(stream) -> None:
    log = ServiceLogger()

    def write(n: int) -> None:
        for i in range(200):
            log.info("tick", {"thread": n, "i": i, "pad": "x" * 500})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lines(stream)) == 1600


def test_on_a_terminal_structlog_renders_for_people() -> None:
    out = _Stream()
    out.isatty = lambda: True  # type: ignore[method-assign]
    configure_logging("info", "auto", out)
    try:
        ServiceLogger().info("hello", {"n": 1})
    finally:
        configure_logging("info", "json")
    text = out.getvalue()
    assert "hello" in text and not text.startswith("{")
