"""The Logger port: JSON lines written directly, or structlog's console rendering on a terminal.

Every execute logs two lines (the access log and ``code_executed``); structlog's processor
chain costs about twice what building and writing the line does. So JSON lines, the
production format, are built here, exactly as structlog's chain built them (the bound
``component``, the attributes, ``event``, ``level``, an ISO ``timestamp`` in UTC with a Z;
json.dumps' default separators); the console format, for people at a terminal, keeps
structlog's renderer.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]
Attrs = Mapping[str, str | int | float | bool] | None

_LEVELS = logging.getLevelNamesMapping()


class _JsonLines:
    """One JSON object per line, whole lines only (a lock per write: threads log too)."""

    def __init__(self, stream: TextIO, threshold: int) -> None:
        self.stream = stream
        self.threshold = threshold
        self._lock = threading.Lock()

    def write(self, level: str, component: str, message: str, attrs: Attrs) -> None:
        record: dict[str, Any] = {"component": component}
        if attrs:
            record.update(attrs)
        record["event"] = message
        record["level"] = level
        record["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        line = json.dumps(record, default=repr) + "\n"
        with self._lock:
            self.stream.write(line)


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time.

    Capturing the stream once would keep writing to a stream someone else has since replaced
    and closed (a test runner's capture, a daemon redirect).
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _Output:
    """Where lines go: the JSON writer when the format is JSON, else None (structlog renders
    for the console). Before configure_logging: JSON lines at info on stderr."""

    json_lines: _JsonLines | None = _JsonLines(_CurrentStderr(), logging.INFO)  # type: ignore[arg-type]


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """JSON lines when the stream is not a terminal (or fmt=json), console rendering on one.

    Logs go to stderr by default so that CLI output on stdout stays machine-readable.
    """
    out: TextIO = stream or _CurrentStderr()  # type: ignore[assignment]
    threshold = _LEVELS[level.upper()]
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    _Output.json_lines = None if use_console else _JsonLines(out, threshold)
    structlog.configure(
        # No merge_contextvars: nothing binds context variables, and every line would pay for it.
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


class ServiceLogger:
    """Logger port: one structured event per call, the message is the event name."""

    def __init__(self, component: str = "sandboxd") -> None:
        self._component = component
        self._console = structlog.get_logger().bind(component=component)

    def debug(self, message: str, attrs: Attrs = None) -> None:
        self._emit("debug", logging.DEBUG, message, attrs)

    def info(self, message: str, attrs: Attrs = None) -> None:
        self._emit("info", logging.INFO, message, attrs)

    def warning(self, message: str, attrs: Attrs = None) -> None:
        self._emit("warning", logging.WARNING, message, attrs)

    def error(self, message: str, attrs: Attrs = None) -> None:
        self._emit("error", logging.ERROR, message, attrs)

    def _emit(self, level: str, number: int, message: str, attrs: Attrs) -> None:
        lines = _Output.json_lines
        if lines is None:
            getattr(self._console, level)(message, **dict(attrs or {}))
        elif number >= lines.threshold:
            lines.write(level, self._component, message, attrs)
