"""The sweep retries failed environment uploads (and never fails because of them), the metrics
count environment cache levels, and the composition root wires environments only on Docker."""

from __future__ import annotations

from entrypoint.application.sweep import Sweeper
from entrypoint.metrics import ServiceMetrics
from testkit.container import make_container
from testkit.fakes import FakeLogger, FakeRuntime


def sweeper_with(retry) -> tuple[Sweeper, FakeLogger]:
    container = make_container(FakeRuntime())
    logger = FakeLogger()
    sweeper = Sweeper(
        cleanup_expired=container.cleanup_expired(),
        reconcile=container.reconcile(),
        leader=container.sweep_leader(),
        logger=logger,
        retry_uploads=retry,
    )
    return sweeper, logger


def test_every_sweep_retries_pending_uploads() -> None:
    calls: list[int] = []

    def retry() -> int:
        calls.append(1)
        return 0

    sweeper, _ = sweeper_with(retry)
    sweeper.run_once()
    sweeper.run_once()
    assert calls == [1, 1]


def test_a_failing_retry_is_logged_and_the_sweep_goes_on() -> None:
    def broken() -> int:
        raise OSError("disk")

    sweeper, logger = sweeper_with(broken)
    report = sweeper.run_once()
    assert report.leader
    assert "environment_upload_retry_failed" in logger.events()


def test_environment_metrics_count_levels_and_durations() -> None:
    metrics = ServiceMetrics()
    metrics.cache_hit("l3")
    metrics.cache_hit("miss")
    metrics.built(4.2)
    metrics.downloaded(0.9)
    text = metrics.render().decode()
    assert 'sandboxd_environment_cache_total{level="l3"} 1.0' in text
    assert 'sandboxd_environment_cache_total{level="miss"} 1.0' in text
    assert "sandboxd_environment_build_duration_seconds_count 1.0" in text
    assert "sandboxd_environment_download_duration_seconds_count 1.0" in text


def test_a_runtime_without_environments_gets_none() -> None:
    container = make_container(FakeRuntime())
    assert container.environments() is None
