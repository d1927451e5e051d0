"""Readiness (the session store and the runtime answer) and the live-sandbox gauge a metrics
scrape refreshes: the service's health, apart from the calls it serves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from domain.sandbox import SandboxStatus
from entrypoint.metrics import ServiceMetrics
from usecase.ports import Logger, SandboxRuntime, SandboxSessionRepository

_COUNT_PAGE = 1000


@dataclass(frozen=True)
class ReadinessReport:
    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        return all(value == "ok" for value in self.checks.values())


class ServiceHealth:
    def __init__(
        self,
        repository: SandboxSessionRepository,
        runtime: SandboxRuntime,
        metrics: ServiceMetrics,
        logger: Logger,
        timeout_s: float = 5.0,
        cache_s: float = 1.0,
    ) -> None:
        self._repository = repository
        self._runtime = runtime
        self._metrics = metrics
        self._logger = logger
        self._timeout_s = timeout_s
        self._cache_s = cache_s
        self._cache: tuple[float, ReadinessReport] | None = None
        self._probe: asyncio.Future[ReadinessReport] | None = None
        # Readiness probes never queue behind executions: they have threads of their own (two,
        # the database and the runtime, probed at once).
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandboxd-ready")
        metrics.on_scrape(self._count_sessions)

    async def readiness(self) -> ReadinessReport:
        """The session store and the runtime both answer within the readiness timeout.

        Answered from a cache of ``cache_s``, and probed on threads of its own (one probe at a
        time, shared by concurrent callers): a flood of /readyz costs nothing, and executions
        holding every worker thread cannot delay it.
        """
        cached = self._cache
        if cached is not None and time.monotonic() - cached[0] < self._cache_s:
            return cached[1]
        loop = asyncio.get_running_loop()
        probe = self._probe
        if probe is None or probe.done() or probe.get_loop() is not loop:
            probe = self._probe = asyncio.ensure_future(self._probe_readiness())
        return await asyncio.shield(probe)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _probe_readiness(self) -> ReadinessReport:
        checks = await asyncio.gather(
            self._check(partial(self._repository.list_sessions, limit=1)),
            self._check(self._runtime.list_managed),
        )
        report = ReadinessReport({"database": checks[0], "runtime": checks[1]})
        self._cache = (time.monotonic(), report)
        return report

    async def _check(self, probe: Callable[[], object]) -> str:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(self._executor, probe), timeout=self._timeout_s
            )
        except TimeoutError:
            return "timeout"
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    def _count_sessions(self) -> None:
        for status in SandboxStatus:
            total, offset = 0, 0
            try:
                while True:
                    page = self._repository.list_sessions(
                        status=status, limit=_COUNT_PAGE, offset=offset
                    )
                    total += len(page)
                    offset += len(page)
                    if len(page) < _COUNT_PAGE:
                        break
            except Exception as exc:
                # A scrape must not fail because the store is down; readiness reports that.
                self._logger.warning("metrics_count_failed", {"error": type(exc).__name__})
                return
            self._metrics.live_sandboxes.labels(status.value).set(total)
