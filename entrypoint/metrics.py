"""Prometheus metrics of one service process, shared by HTTP, gRPC and the cleanup worker.

Each ServiceMetrics owns its registry, so that tests can build many apps in one process.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from domain.execution import ExecutionResult

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST

_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_ENVIRONMENT_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def execution_outcome(result: ExecutionResult) -> str:
    """ok, error (non-zero exit) or timed_out; ``failed`` is used when no result came back."""
    if result.timed_out:
        return "timed_out"
    return "ok" if result.exit_code == 0 else "error"


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.executions = Counter(
            "sandboxd_executions",
            "Executions by outcome (ok, error, timed_out, failed) and transport.",
            ["outcome", "transport"],
            registry=self.registry,
        )
        self.execution_duration = Histogram(
            "sandboxd_execution_duration_seconds",
            "Wall time of an execution request, lock wait and sandbox creation included.",
            ["transport"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.executions_in_flight = Gauge(
            "sandboxd_executions_in_flight",
            "Executions running now.",
            registry=self.registry,
        )
        self.live_sandboxes = Gauge(
            "sandboxd_live_sandboxes",
            "Session records by status, counted at scrape time.",
            ["status"],
            registry=self.registry,
        )
        self.cleanup_results = Counter(
            "sandboxd_cleanup_sandboxes",
            "Sweep results: cleaned (expired), orphan_removed, marked_dead, failed.",
            ["result"],
            registry=self.registry,
        )
        self.sweeps = Counter(
            "sandboxd_sweeps",
            "Cleanup sweeps by result: ok, error, skipped (another replica is the leader).",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "sandboxd_errors",
            "Error responses by stable error code and transport.",
            ["code", "transport"],
            registry=self.registry,
        )
        self.requests = Counter(
            "sandboxd_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.environment_cache = Counter(
            "sandboxd_environment_cache",
            "Package environment lookups by level: l2 (local), l3 (artifact store), miss (built).",
            ["level"],
            registry=self.registry,
        )
        self.environment_build_duration = Histogram(
            "sandboxd_environment_build_duration_seconds",
            "Local builds of package environments (fetch, offline install, commit).",
            buckets=_ENVIRONMENT_BUCKETS,
            registry=self.registry,
        )
        self.environment_download_duration = Histogram(
            "sandboxd_environment_download_duration_seconds",
            "Environments loaded from the artifact store (download, decompress, load).",
            buckets=_ENVIRONMENT_BUCKETS,
            registry=self.registry,
        )
        self._scrape_hooks: list[Callable[[], None]] = []

    # The environment store's cache observer (adapter.environment.docker_store).
    def cache_hit(self, level: str) -> None:
        self.environment_cache.labels(level).inc()

    def built(self, seconds: float) -> None:
        self.environment_build_duration.observe(seconds)

    def downloaded(self, seconds: float) -> None:
        self.environment_download_duration.observe(seconds)

    def expose_sandbox_capacity(self, max_sandboxes: int | None) -> None:
        """This node's cap on running sandboxes, for dashboards of live sandboxes against it.
        Not exposed when there is no cap: a 0 would read as "full"."""
        if max_sandboxes is None:
            return
        Gauge(
            "sandboxd_sandbox_capacity",
            "Running sandboxes this node takes at most (SANDBOXD_MAX_SANDBOXES, or derived from "
            "its memory); a new chat past it gets 429 sandbox_limit.",
            registry=self.registry,
        ).set(max_sandboxes)

    def on_scrape(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before each exposition (refreshes gauges that are read, not counted)."""
        self._scrape_hooks.append(hook)

    def render(self) -> bytes:
        for hook in self._scrape_hooks:
            hook()
        return generate_latest(self.registry)
