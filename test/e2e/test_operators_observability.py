"""The Grafana dashboard and the Prometheus alert rules name only metrics (and labels) that a real
service exposes on /metrics, a service with a warm pool and a sandbox cap; promtool (Debian's
prometheus package) accepts the rules and passes their unit tests (alerts_test.yml)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from testkit.service import API_KEY, ROOT, ServiceFactory, ServiceProcess

pytestmark = pytest.mark.docker

DASHBOARD = ROOT / "deploy" / "grafana" / "sandboxd.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"

_METRIC = re.compile(r"\b(sandboxd_[a-z0-9_]+)\b")
# label="value", label=~"regex", label!=... inside a selector, and "by (a, b)" groupings.
_SELECTOR = re.compile(r"\b(sandboxd_[a-z0-9_]+)\{([^}]*)\}")
_MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
# Labels Prometheus adds at scrape time, not the service.
_TARGET_LABELS = {"instance", "job", "le"}
# Gauge families whose every value of this label is set at each scrape: a value the rules name
# must be on /metrics too (a typo such as measure="claim_missed" would never match).
_ENUMERATED = {"sandboxd_pool": "measure", "sandboxd_live_sandboxes": "status"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            expressions.append(query["query"])
    return expressions


def alert_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def test_every_panel_and_rule_has_a_sandboxd_expression() -> None:
    # So that the test below cannot pass on files it failed to read.
    assert len(dashboard_expressions()) >= 10
    assert len(alert_expressions()) >= 8
    assert all(_METRIC.search(expr) for expr in alert_expressions() if "up{" not in expr)


@pytest.fixture(scope="module")
def exposition(module_services: ServiceFactory) -> str:
    """/metrics of a service with a warm pool and a sandbox cap that ran an execution, answered
    an error and swept."""
    service: ServiceProcess = module_services(
        cleanup_interval_seconds="1", pool_size="1", max_sandboxes="64"
    )
    headers = {"Authorization": f"Bearer {API_KEY}"}
    chat = uuid.uuid4()
    executed = httpx.post(
        f"{service.http_url}/v1/chats/{chat}/executions",
        json={"code": "print(1)"},
        headers=headers,
        timeout=120,
    )
    assert executed.status_code == 200, executed.text
    missing = httpx.get(f"{service.http_url}/v1/chats/{uuid.uuid4()}/sandbox", headers=headers)
    assert missing.status_code == 404
    deadline = time.monotonic() + 30
    while True:
        text = httpx.get(f"{service.http_url}/metrics", headers=headers, timeout=10).text
        swept = "sandboxd_sweeps_total{" in text
        if (swept and 'pool="default"' in text) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def _label_values(exposition: str, name: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == name and label in sample.labels
    }


def _named_values(expr: str, name: str, label: str) -> set[str]:
    """Values of ``label`` that ``expr`` selects on ``name`` with = or =~ (plain alternatives)."""
    values: set[str] = set()
    for matchers in re.findall(rf"\b{name}\{{([^}}]*)\}}", expr):
        for value in re.findall(rf'\b{label}\s*=~?\s*"([^"]*)"', matchers):
            values.update(value.split("|"))
    return values


def _exposed(exposition: str) -> dict[str, set[str]]:
    """Sample name -> label names, for every name the exposition can carry."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_metrics_and_labels_exist_on_a_real_service(exposition: str, source: str) -> None:
    exposed = _exposed(exposition)
    expressions = dashboard_expressions() if source == "dashboard" else alert_expressions()
    used = {name for expr in expressions for name in _METRIC.findall(expr)}
    assert used, source
    assert sorted(used - exposed.keys()) == [], f"not on /metrics: {sorted(exposed)}"
    for expr in expressions:
        for name, matchers in _SELECTOR.findall(expr):
            labels = set(_MATCHER.findall(matchers)) - _TARGET_LABELS
            assert labels <= exposed[name], f"{name} has labels {exposed[name]}; {expr}"
        grouped = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")}
        available = set().union(*(exposed[name] for name in _METRIC.findall(expr)))
        assert grouped - _TARGET_LABELS <= available, expr
        for name, label in _ENUMERATED.items():
            named = _named_values(expr, name, label)
            assert named <= _label_values(exposition, name, label), f"{name} {label}: {expr}"


def test_the_pool_and_capacity_series_are_there(exposition: str) -> None:
    # So that the checks above ran against a service that has them.
    assert _label_values(exposition, "sandboxd_pool", "pool") >= {"", "default"}
    assert "\nsandboxd_sandbox_capacity 64.0\n" in exposition


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: scripts/setup.sh ops-tools")
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_of_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: scripts/setup.sh ops-tools")
    done = subprocess.run(
        [promtool, "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert {"SandboxdPoolExhausted", "SandboxdNearSandboxCapacity"} <= tested
