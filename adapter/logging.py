"""structlog-backed implementation of the Logger port."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]


def configure_logging(
    level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None
) -> None:
    """JSON lines when the stream is not a terminal (or fmt=json), console rendering on one.

    Logs go to stderr by default so that CLI output on stdout stays machine-readable.
    """
    out: TextIO = stream or _CurrentStderr()  # type: ignore[assignment]
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=True)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        # No merge_contextvars: nothing binds context variables, and every line would pay for it.
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


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


class StructlogLogger:
    """Logger port: one structured event per call, the message is the event name."""

    def __init__(self, component: str = "sandboxd") -> None:
        self._log = structlog.get_logger().bind(component=component)

    def debug(
        self, message: str, attrs: Mapping[str, str | int | float | bool] | None = None
    ) -> None:
        self._log.debug(message, **dict(attrs or {}))

    def info(
        self, message: str, attrs: Mapping[str, str | int | float | bool] | None = None
    ) -> None:
        self._log.info(message, **dict(attrs or {}))

    def warning(
        self, message: str, attrs: Mapping[str, str | int | float | bool] | None = None
    ) -> None:
        self._log.warning(message, **dict(attrs or {}))

    def error(
        self, message: str, attrs: Mapping[str, str | int | float | bool] | None = None
    ) -> None:
        self._log.error(message, **dict(attrs or {}))
