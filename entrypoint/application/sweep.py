"""The sweep (expiry cleanup, then reconciliation) and the worker that runs it periodically.

``sandboxd cleanup --once`` and the worker inside ``sandboxd serve`` run the same Sweeper, so a
cron job and a long-running service behave alike. Only the leader sweeps: with PostgreSQL the
leader is an advisory lock (one replica at a time); with SQLite a lock file; in memory a
process-local lock. A replica that is not the leader skips the round and tries again next time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from entrypoint.metrics import ServiceMetrics
from usecase.ports import Logger, SweepLeader
from usecase.reconcile import ReconcileSandboxes
from usecase.sandbox import CleanupExpiredSandboxes


@dataclass
class SweepReport:
    leader: bool
    cleaned: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)
    marked_dead: list[str] = field(default_factory=list)
    reconcile_failures: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "leader": self.leader,
            "cleaned": self.cleaned,
            "orphans_removed": self.orphans_removed,
            "marked_dead": self.marked_dead,
            "reconcile_failures": self.reconcile_failures,
        }


class Sweeper:
    """One sweep: CleanupExpiredSandboxes, then ReconcileSandboxes, while holding leadership.

    Cleanup goes first so that reconciliation does not mark dead what cleanup is about to
    delete anyway. Errors of the store or runtime as a whole propagate (the sweep is retried
    next round); per-sandbox failures are handled inside the use cases.
    """

    def __init__(
        self,
        cleanup_expired: CleanupExpiredSandboxes,
        reconcile: ReconcileSandboxes,
        leader: SweepLeader,
        logger: Logger,
        metrics: ServiceMetrics | None = None,
        retry_uploads: Callable[[], int] | None = None,
    ) -> None:
        self._retry_uploads = retry_uploads
        self._cleanup_expired = cleanup_expired
        self._reconcile = reconcile
        self._leader = leader
        self._logger = logger
        self._metrics = metrics

    def run_once(self) -> SweepReport:
        self._retry_environment_uploads()
        try:
            with self._leader.try_lead() as leading:
                if not leading:
                    self._count_sweep("skipped")
                    self._logger.info("sweep_skipped", {"reason": "another sweeper leads"})
                    return SweepReport(leader=False)
                report = self._sweep()
        except Exception as exc:
            self._count_sweep("error")
            self._logger.error("sweep_failed", {"error": type(exc).__name__})
            raise
        self._count_sweep("ok")
        self._logger.info(
            "sweep_finished",
            {
                "cleaned": len(report.cleaned),
                "orphans_removed": len(report.orphans_removed),
                "marked_dead": len(report.marked_dead),
                "reconcile_failures": report.reconcile_failures,
            },
        )
        return report

    def _sweep(self) -> SweepReport:
        cleaned = self._cleanup_expired.execute()
        reconciled = self._reconcile.execute()
        report = SweepReport(
            leader=True,
            cleaned=[str(session.session_id) for session in cleaned],
            orphans_removed=list(reconciled.removed_orphans),
            marked_dead=[str(session.session_id) for session in reconciled.marked_dead],
            reconcile_failures=reconciled.failures,
        )
        if self._metrics is not None:
            results = self._metrics.cleanup_results
            results.labels("cleaned").inc(len(report.cleaned))
            results.labels("orphan_removed").inc(len(report.orphans_removed))
            results.labels("marked_dead").inc(len(report.marked_dead))
            results.labels("failed").inc(report.reconcile_failures)
        return report

    def _retry_environment_uploads(self) -> None:
        """Every replica, leader or not: pending uploads are of this host's own images."""
        if self._retry_uploads is None:
            return
        try:
            self._retry_uploads()
        except Exception as exc:
            # The artifact store must never fail the sweep.
            self._logger.warning("environment_upload_retry_failed", {"error": type(exc).__name__})

    def _count_sweep(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.sweeps.labels(result).inc()


class CleanupWorker:
    """Runs the Sweeper every ``interval_s`` on a thread of its own, until stopped.

    The first round waits one interval: start-up has just swept. A failed round is logged (by
    the Sweeper) and the next one comes on schedule.
    """

    def __init__(self, sweeper: Sweeper, interval_s: float, logger: Logger) -> None:
        self._sweeper = sweeper
        self._interval_s = interval_s
        self._logger = logger
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cleanup-worker")

    async def stop(self, timeout_s: float) -> None:
        """Stop scheduling; a sweep under way may finish within ``timeout_s``."""
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
        except TimeoutError:
            # The sweep thread cannot be interrupted; it ends with the process.
            self._logger.warning("cleanup_worker_stop_timed_out", {"timeout_s": timeout_s})

    async def _run(self) -> None:
        while not await self._wait_interval():
            try:
                await asyncio.to_thread(self._sweeper.run_once)
            except Exception as exc:
                # Logged by the Sweeper with its context; the worker itself must survive.
                self._logger.debug("cleanup_round_failed", {"error": type(exc).__name__})
            self.rounds += 1

    async def _wait_interval(self) -> bool:
        """True when stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=self._interval_s)
        except TimeoutError:
            return False
        return True
