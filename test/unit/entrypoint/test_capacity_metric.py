"""The node's sandbox cap is on /metrics when there is one, absent (not 0) when there is none."""

from __future__ import annotations

from entrypoint.metrics import ServiceMetrics


def test_the_cap_is_exposed() -> None:
    metrics = ServiceMetrics()
    metrics.expose_sandbox_capacity(24)
    assert "\nsandboxd_sandbox_capacity 24.0\n" in metrics.render().decode()


def test_no_cap_no_series() -> None:
    metrics = ServiceMetrics()
    metrics.expose_sandbox_capacity(None)
    assert "sandboxd_sandbox_capacity" not in metrics.render().decode()
