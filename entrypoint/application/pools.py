"""Warm pools inside ``sandboxd serve``: the default pool from settings, the health loop, the
per-pool metrics, and shutdown (idle members are destroyed when the service stops)."""

from __future__ import annotations

import asyncio

from prometheus_client import Gauge

from domain.pool import PoolCapacity, PoolDefinition, pool_size_for
from entrypoint.metrics import ServiceMetrics
from entrypoint.settings import PoolSettings
from usecase.pool import WarmPools
from usecase.pool_admin import ManagePools
from usecase.ports import Logger

DEFAULT_POOL = "default"


def default_pool(settings: PoolSettings, host_capacity: int | None) -> PoolDefinition | None:
    """The base environment's pool from SANDBOXD_POOL_SIZE, or SANDBOXD_POOL_RATIO of the host's
    sandbox cap (``host_capacity``; None, unknown: no ratio pool); None when off."""
    ratio_size = pool_size_for(host_capacity, settings.ratio) if host_capacity else 0
    size = settings.size or ratio_size
    if size <= 0:
        return None
    return PoolDefinition(DEFAULT_POOL, "python", (), PoolCapacity.fixed(size))


def install_pool_metrics(metrics: ServiceMetrics, pools: WarmPools) -> None:
    """Per-pool gauges read at scrape time from the pools' own counters."""
    gauge = Gauge(
        "sandboxd_pool",
        "Warm pools: idle and allocated members; claims served from the pool, replenish and "
        "health-check failures, starts refused for the host's sandbox cap (replenish_capped) "
        "and idle members evicted to admit a chat at the cap (totals since start); on_demand "
        "creations (pool = '').",
        ["pool", "measure"],
        registry=metrics.registry,
    )

    def refresh() -> None:
        gauge.labels("", "on_demand").set(pools.on_demand)
        for pool in pools.pools():
            name = pool.definition.name
            status = pool.status()
            counters = pool.counters
            gauge.labels(name, "idle").set(status.available)
            gauge.labels(name, "allocated").set(status.allocated)
            gauge.labels(name, "claims_from_pool").set(counters.claimed)
            gauge.labels(name, "claims_missed").set(counters.missed)
            gauge.labels(name, "replenish_failures").set(counters.replenish_failures)
            gauge.labels(name, "health_failures").set(counters.health_failures)
            gauge.labels(name, "replenish_capped").set(counters.replenish_capped)
            gauge.labels(name, "evicted").set(counters.evicted)

    metrics.on_scrape(refresh)


class PoolWorker:
    """Starts the pools, then every ``interval_s`` re-reads the shared definitions and pings the
    idle members; ``stop`` ends the loop and destroys the idle members."""

    def __init__(
        self,
        manage: ManagePools,
        pools: WarmPools,
        settings: PoolSettings,
        logger: Logger,
        host_capacity: int | None = None,
    ) -> None:
        self._host_capacity = host_capacity
        self._manage = manage
        self._pools = pools
        self._settings = settings
        self._logger = logger
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        default = default_pool(self._settings, self._host_capacity)
        if self._settings.ratio and not self._settings.size and self._host_capacity is None:
            self._logger.warning(
                "pool_ratio_without_capacity",
                {"ratio": self._settings.ratio, "reason": "the host's memory cannot be read"},
            )
        if default is not None:
            await asyncio.to_thread(self._manage.ensure_default, default)
        await asyncio.to_thread(self._manage.sync)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pool-worker")

    async def stop(self, timeout_s: float) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
            except TimeoutError:
                self._logger.warning("pool_worker_stop_timed_out", {"timeout_s": timeout_s})
        await asyncio.to_thread(self._pools.close, timeout_s)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self._settings.health_interval_seconds
                )
                return
            except TimeoutError:
                pass
            try:
                await asyncio.to_thread(self._manage.sync)
                await asyncio.to_thread(self._pools.check_health)
            except Exception as exc:
                # The next round retries; the pools keep serving what they hold.
                self._logger.error("pool_round_failed", {"error": type(exc).__name__})
