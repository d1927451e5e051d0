"""The benchmark report: every figure of one run, its floor, its ratio to the floor, its target.

    uv run python -m bench.report bench/results/<run>      # rebuild report.md from raw/*.json
    uv run python -m bench.report --readme bench/results/<run>   # the README's figures block

``build_report(steps, meta)`` turns the JSON of each benchmark script (as bench/run collected it)
into one report dict; ``render_markdown(report)`` makes the Markdown table. The scripts belong to
several people and may change: a figure whose key is missing shows as "missing" instead of
breaking the report.

Floors come from bench/floors.py in the same run: a bare ``docker run --rm`` (for a new chat's
first result), a bare ``docker exec`` (for executes on an existing sandbox, and as a rate for
throughput) and a QEMU cold boot (for a snapshot restore). A figure over its target is flagged
**OVER** in the table and listed under "Over target".
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, OVER, MISSING, NO_TARGET = "ok", "OVER", "missing", ""


def dig(data: Any, path: str) -> Any:
    """data["a"]["b"]... for path "a.b"; None when any step is missing."""
    for key in path.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


@dataclass(frozen=True)
class Floor:
    name: str
    step: str
    path: str
    unit: str
    # A rate floor is 1000 / (the floor in ms): "as many per second as serial bare calls".
    as_rate: bool = False


FLOORS = {
    "docker_run": Floor("bare `docker run --rm` (python3 print(1))", "floors",
                        "docker.docker_run_rm_python_ms.p50", "ms"),
    "docker_exec": Floor("bare `docker exec` (true)", "floors",
                         "docker.docker_exec_true_ms.p50", "ms"),
    "docker_exec_rate": Floor("serial bare `docker exec` rate", "floors",
                              "docker.docker_exec_true_ms.p50", "/s", as_rate=True),
    "qemu_cold": Floor("QEMU cold boot to agent ready", "floors",
                       "qemu.cold_boot_to_agent_ready_s.median", "s"),
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    group: str
    name: str
    step: str
    path: str
    unit: str
    floor: str | None = None
    # ("max", x): value <= x; ("min", x): value >= x; ("max_ratio", x): value / floor <= x.
    target: tuple[str, float] | None = None


SPECS = [
    Spec("PostgreSQL store", "save+get median", "persistence",
         "postgresql.save_get.median_ms", "ms"),
    Spec("PostgreSQL store", "save+get p99", "persistence", "postgresql.save_get.p99_ms", "ms"),
    Spec("PostgreSQL store", "advisory lock+unlock median", "persistence",
         "postgresql.lock_unlock.median_ms", "ms"),
    Spec("PostgreSQL store", "advisory lock+unlock p99", "persistence",
         "postgresql.lock_unlock.p99_ms", "ms"),
    Spec("PostgreSQL store", "list_expired over {postgresql.list_expired.rows} rows, median",
         "persistence",
         "postgresql.list_expired.median_ms", "ms"),
    Spec("PostgreSQL store", "list_expired plan uses the expiry index (EXPLAIN)",
         "persistence", "postgresql.list_expired.uses_expiry_index", "bool", None, ("min", 1)),
    Spec("SQLite store", "save+get median", "persistence", "sqlite.save_get.median_ms", "ms"),
    Spec("SQLite store", "file lock+unlock median", "persistence",
         "sqlite.lock_unlock.median_ms", "ms"),
    Spec("SQLite store", "list_expired over {sqlite.list_expired.rows} rows, median",
         "persistence",
         "sqlite.list_expired.median_ms", "ms"),
    Spec("Docker runtime", "execute print(1) p50", "docker_runtime",
         "execute_print1_ms.p50", "ms", "docker_exec", ("max", 5.0)),
    Spec("Docker runtime", "execute print(1) p99", "docker_runtime",
         "execute_print1_ms.p99", "ms", "docker_exec"),
    Spec("Docker runtime", "new chat's first result, median", "docker_runtime",
         "new_chat_first_result_ms.median", "ms", "docker_run", ("max_ratio", 1.3)),
    Spec("Docker runtime", "first result / docker run --rm, interleaved in its script",
         "docker_runtime", "first_result_vs_docker_run_ratio", "x", None, ("max", 1.3)),
    Spec("Docker runtime", "idle sandbox RSS (agent + python)", "docker_runtime",
         "idle_sandbox_rss_mb", "MB", None, ("max", 40.0)),
    Spec("gVisor (runsc)", "execute print(1) p50", "gvisor",
         "runsc.execute_print1_ms.p50", "ms"),
    Spec("gVisor (runsc)", "execute p50 / runc's", "gvisor",
         "runsc_vs_runc.execute_p50_ratio", "x"),
    Spec("gVisor (runsc)", "new sandbox's first result, median", "gvisor",
         "runsc.first_result_ms.median", "ms"),
    Spec("gVisor (runsc)", "per-execution process sweep p50", "gvisor",
         "runsc.process_sweep_p50_us", "us"),
    Spec("QEMU runtime", "cold boot to agent ready, median", "qemu_runtime",
         "cold_boot_to_agent_ready_s.median", "s", "qemu_cold"),
    Spec("QEMU runtime", "snapshot restore to first result, median", "qemu_runtime",
         "snapshot_restore_to_first_result_s.median", "s", "qemu_cold", ("max", 0.5)),
    Spec("QEMU runtime", "execute round trip p50", "qemu_runtime",
         "execute_round_trip_ms.p50", "ms", "docker_exec", ("max", 5.0)),
    Spec("QEMU runtime", "idle VM host RSS, mean", "qemu_runtime",
         "idle_vm_host_rss_mib.mean", "MiB"),
    Spec("HTTP API", "execute p50, 16 chats (open loop)", "http", "p50_ms", "ms",
         "docker_exec", ("max", 10.0)),
    Spec("HTTP API", "execute p99, 16 chats (open loop)", "http", "p99_ms", "ms",
         "docker_exec", ("max", 40.0)),
    Spec("HTTP API", "executes per second, 16 chats (closed loop)", "http",
         "executes_per_s", "/s", "docker_exec_rate", ("min", 200.0)),
    Spec("HTTP API", "execute p50, one caller", "http", "serial_p50_ms", "ms", "docker_exec",
         ("max", 2.0)),
    Spec("HTTP API", "service CPU per execute, 16 chats (closed loop)", "http",
         "service_cpu_ms_per_execute", "ms", None, ("max", 1.0)),
    Spec("HTTP API", "service CPU per execute, SQLite store", "http_sqlite",
         "service_cpu_ms_per_execute", "ms"),
    Spec("gRPC API", "Execute p50, one caller", "grpc", "serial_ms.p50", "ms", "docker_exec"),
    Spec("gRPC API", "service CPU per Execute, 16 chats (closed loop)", "grpc",
         "service_cpu_ms_per_execute", "ms", None, ("max", 0.8)),
    Spec("gRPC API", "bare grpc.aio server CPU per call, 16 callers (the floor)", "grpc",
         "transport_floor.closed_loop.server_cpu_ms_per_call", "ms"),
    Spec("gRPC API", "service CPU per Execute, SQLite store", "grpc_sqlite",
         "service_cpu_ms_per_execute", "ms"),
    Spec("gRPC API", "Execute p50, 16 chats (open loop)", "grpc", "p50_ms", "ms",
         "docker_exec", ("max", 10.0)),
    Spec("gRPC API", "Execute p99, 16 chats (open loop)", "grpc", "p99_ms", "ms",
         "docker_exec", ("max", 40.0)),
    Spec("gRPC API", "executes per second, 16 chats (closed loop)", "grpc",
         "executes_per_s", "/s", "docker_exec_rate", ("min", 200.0)),
    Spec("Cleanup", "sweep of expired sessions (stopped containers)", "cleanup",
         "sessions_per_s", "sessions/s"),
    Spec("Cleanup", "sweep of 1,000 expired sessions", "cleanup", "sweep_s", "s", None,
         ("max", 10.0)),
    Spec("Cleanup", "sweep, per running sandbox", "cleanup", "running_sandbox_ms_each", "ms"),
    Spec("Cleanup", "sweep of records whose containers are gone", "cleanup",
         "records_only_sessions_per_s", "sessions/s"),
    Spec("Load (HTTP)", "peak executes per second", "load", "peak_executes_per_s", "/s",
         "docker_exec_rate"),
    Spec("Density", "Docker: host memory per idle sandbox (PSS, with shim)", "density",
         "docker.per_sandbox_pss_mb", "MB"),
    Spec("Density", "Docker: idle sandboxes that fit", "density",
         "docker.idle_sandboxes_fit", ""),
    Spec("Density", "QEMU: host memory per idle VM (PSS)", "density",
         "qemu.per_sandbox_pss_mb", "MB"),
    Spec("Density", "QEMU: idle VMs that fit", "density", "qemu.idle_sandboxes_fit", ""),
    *(
        spec
        for step, runtime in (("pools_docker", "Docker"), ("pools_qemu", "QEMU"))
        for spec in (
            Spec(f"Pools ({runtime})", "new chat's first result, warm pool, p50", step,
                 "warm_pool.first_result_ms.p50", "ms", None, ("max", 20.0)),
            Spec(f"Pools ({runtime})", "new chat's first result, pools off, p50", step,
                 "pools_off.first_result_ms.p50", "ms"),
            Spec(f"Pools ({runtime})", "warm p50 / pools-off p50", step, "ratio_p50", "x",
                 None, ("max", 0.2)),
            Spec(f"Pools ({runtime})", "burst of 2x the pool size, p50", step,
                 "warm_pool.burst.first_result_ms.p50", "ms"),
            Spec(f"Pools ({runtime})", "burst, the slower half (started on demand), p50", step,
                 "warm_pool.burst.slowest_half_ms.p50", "ms"),
            Spec(f"Pools ({runtime})", "host memory per idle pooled sandbox, mean", step,
                 "warm_pool.idle_member_memory_mb.mean", "MiB"),
        )
    ),
]  # fmt: skip


@dataclass(frozen=True)
class Figure:
    group: str
    name: str
    step: str
    value: float | None
    unit: str
    floor_name: str | None
    floor_value: float | None
    floor_unit: str | None
    ratio: float | None
    target: str
    status: str


def _number(value: Any, unit: str = "") -> float | None:
    if unit == "bool" and isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _floor_value(floor: Floor, steps: dict[str, dict[str, Any]]) -> float | None:
    value = _number(dig(steps.get(floor.step, {}).get("data"), floor.path))
    if value is None or value <= 0:
        return None
    return 1000.0 / value if floor.as_rate else value


def _target_text(target: tuple[str, float] | None, unit: str) -> str:
    if target is None:
        return ""
    kind, limit = target
    return {
        "max": f"<= {limit:g} {unit}".strip(),
        "min": f">= {limit:g} {unit}".strip(),
        "max_ratio": f"<= {limit:g}x floor",
    }[kind]


def _status(value: float | None, ratio: float | None, target: tuple[str, float] | None) -> str:
    if value is None:
        return MISSING
    if target is None:
        return NO_TARGET
    kind, limit = target
    if kind == "max":
        return OK if value <= limit else OVER
    if kind == "min":
        return OK if value >= limit else OVER
    if ratio is None:
        return MISSING
    return OK if ratio <= limit else OVER


def figure(spec: Spec, steps: dict[str, dict[str, Any]]) -> Figure:
    step = steps.get(spec.step, {})
    data = step.get("data") if step.get("status") == "ok" else None
    value = _number(dig(data, spec.path), spec.unit)
    floor = FLOORS[spec.floor] if spec.floor else None
    floor_value = _floor_value(floor, steps) if floor else None
    ratio = None
    if value is not None and floor_value:
        # A floor in seconds against a figure in seconds, ms against ms: units match by design.
        ratio = round(value / floor_value, 3)
    return Figure(
        group=spec.group,
        name=_named(spec.name, step.get("data")),
        step=spec.step,
        value=value,
        unit=spec.unit,
        floor_name=floor.name if floor else None,
        floor_value=round(floor_value, 3) if floor_value is not None else None,
        floor_unit=floor.unit if floor else None,
        ratio=ratio,
        target="yes" if spec.unit == "bool" else _target_text(spec.target, spec.unit),
        status=_status(value, ratio, spec.target),
    )


def _named(name: str, data: Any) -> str:
    """Fill {a.b} placeholders in a figure's name from its step's data ("?" when missing)."""
    return re.sub(r"\{([\w.]+)\}", lambda match: f"{dig(data, match.group(1)) or '?':,}", name)


def build_report(steps: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """``steps``: name -> {status: ok|failed|unavailable|skipped, data, error, seconds}."""
    figures = [figure(spec, steps) for spec in SPECS if spec.step in steps]
    return {
        "meta": meta,
        "steps": {
            name: {key: value for key, value in step.items() if key != "data"}
            for name, step in steps.items()
        },
        "figures": [asdict(item) for item in figures],
        "over_target": [f"{item.group}: {item.name}" for item in figures if item.status == OVER],
        "target_not_checked": [
            f"{item.group}: {item.name}"
            for item in figures
            if item.status == MISSING and item.target
        ],
        "unavailable": _unavailable(steps),
        "failed": {
            name: step.get("error", "")
            for name, step in steps.items()
            if step.get("status") == "failed"
        },
        "floors": {
            key: _floor_value(floor, steps) for key, floor in FLOORS.items() if not floor.as_rate
        },
        "load": _without_samples(steps.get("load", {}).get("data")),
        "density": steps.get("density", {}).get("data"),
        "data": {name: _without_samples(step.get("data")) for name, step in steps.items()},
    }


def _unavailable(steps: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Steps that could not run, and parts of steps that said so (``{"unavailable": why}``)."""
    found = {
        name: str(step.get("error", ""))
        for name, step in steps.items()
        if step.get("status") == "unavailable"
    }
    for name, step in steps.items():
        data = step.get("data")
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, dict) and "unavailable" in value:
                    found[f"{name}.{key}"] = str(value["unavailable"])
    return found


def _without_samples(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    return {key: value for key, value in data.items() if key != "samples_ms"}


def _fmt(value: float | None, unit: str | None = "") -> str:
    if value is None:
        return "—"
    if unit == "bool":
        return "yes" if value else "no"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return f"{text} {unit}".strip() if unit else text


def _figure_rows(figures: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| Area | Figure | Value | Floor (same run) | Ratio to floor | Target | Status |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for item in figures:
        floor = (
            f"{_fmt(item['floor_value'], item['floor_unit'])} {item['floor_name']}"
            if item["floor_name"]
            else ""
        )
        if item["floor_name"] and item["floor_value"] is None:
            floor = f"missing: {item['floor_name']}"
        ratio = f"{item['ratio']:.3g}x" if item["ratio"] is not None else ""
        status = {OVER: "**OVER**", MISSING: f"missing ({item['step']})"}.get(
            item["status"], item["status"]
        )
        rows.append(
            f"| {item['group']} | {item['name']} | {_fmt(item['value'], item['unit'])} | "
            f"{floor} | {ratio} | {item['target']} | {status} |"
        )
    return rows


def _load_rows(load: dict[str, Any] | None) -> list[str]:
    if not load or "levels" not in load:
        return ["No load test results."]
    rows = [
        f"{load.get('chats')} chats x {load.get('executes_per_chat_per_level')} executes per "
        f"level, HTTP, PostgreSQL store, Docker sandboxes. First result (sandbox creation, "
        f"{load.get('create_concurrency')} at a time): p50 "
        f"{_fmt(dig(load, 'first_result_ms.p50'), 'ms')}.",
        "",
        "| Concurrency | Executes/s | p50 | p90 | p99 | max | Errors | Service CPU/execute |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in load["levels"]:
        latency = level.get("latency_ms", {})
        rows.append(
            f"| {level.get('concurrency')} | {_fmt(level.get('executes_per_s'))} | "
            f"{_fmt(latency.get('p50'), 'ms')} | {_fmt(latency.get('p90'), 'ms')} | "
            f"{_fmt(latency.get('p99'), 'ms')} | {_fmt(latency.get('max'), 'ms')} | "
            f"{level.get('errors')} | {_fmt(level.get('service_cpu_ms_per_execute'), 'ms')} |"
        )
    bend = load.get("bend")
    rows += [
        "",
        f"Latency bends at concurrency **{bend['concurrency']}** ({bend['reason']})."
        if bend
        else "No bend within the ramp.",
        f"Errors: {load.get('errors')}, lost results: {load.get('lost_results')}.",
    ]
    return rows


def _density_rows(density: dict[str, Any] | None) -> list[str]:
    if not density:
        return ["No density results."]
    rows = [
        f"MemAvailable at start {_fmt(density.get('mem_available_mb'), 'MB')} of "
        f"{_fmt(density.get('mem_total_mb'), 'MB')}; "
        f"{int(density.get('reserve_fraction', 0) * 100)} % kept in reserve.",
        "",
        "| Runtime | Sandboxes measured | RSS each | PSS each (host total) "
        "| MemAvailable drop each | Idle ones that fit (by PSS) | (by MemAvailable drop) "
        "| Fit if all fill their limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for runtime in ("docker", "qemu"):
        item = density.get(runtime) or {}
        if "unavailable" in item:
            rows.append(f"| {runtime} | **unavailable**: {item['unavailable']} |||||||")
            continue
        rows.append(
            f"| {runtime} | {item.get('sandboxes')} | "
            f"{_fmt(dig(item, 'sandbox.rss_mb_mean'), 'MB')} | "
            f"{_fmt(item.get('per_sandbox_pss_mb'), 'MB')} | "
            f"{_fmt(item.get('mem_available_drop_mb_per_sandbox'), 'MB')} | "
            f"{_fmt(item.get('idle_sandboxes_fit'))} | "
            f"{_fmt(item.get('fit_by_available_drop'))} | "
            f"{_fmt(item.get('at_memory_limit_fit'))} "
            f"({_fmt(item.get('memory_limit_mb'), 'MB')} each) |"
        )
    return rows


def _verdict(report: dict[str, Any]) -> str:
    over = report["over_target"]
    unchecked = report.get("target_not_checked", [])
    parts = [f"Over target: {', '.join(over)}." if over else ""]
    if unchecked:
        parts.append(f"Not measured, target not checked: {', '.join(unchecked)}.")
    if not over and not unchecked:
        parts.append("Every target met.")
    elif not over:
        parts.append("Every target that was measured was met.")
    return " ".join(part for part in parts if part)


def render_markdown(report: dict[str, Any], chart: str | None = "chart.png") -> str:
    meta = report["meta"]
    machine = meta.get("machine", {})
    lines = [
        "# sandboxd benchmark report",
        "",
        f"- Run: {meta.get('started_at', '?')}, {meta.get('mode', '?')} mode, "
        f"{_fmt(meta.get('seconds'), 's')} in all; command: `{meta.get('command', 'bench/run')}`",
        f"- Machine: {machine.get('nproc', '?')} CPUs ({machine.get('cpu_model', '?')}), "
        f"{machine.get('mem_total', '?')} RAM; load average {meta.get('load_before', '?')} "
        f"before, {meta.get('load_after', '?')} after",
        f"- Quiet machine: {meta.get('quiet', '?')} {meta.get('quiet_note', '')}".rstrip(),
    ]
    if report["failed"]:
        lines += ["", "## FAILED", ""]
        lines += [f"- **{name}**: {error}" for name, error in report["failed"].items()]
    if report["unavailable"]:
        lines += ["", "## UNAVAILABLE (not measured in this run)", ""]
        lines += [f"- **{name}**: {error}" for name, error in report["unavailable"].items()]
    lines += ["", "## Figures, floors and targets", ""]
    lines += _figure_rows(report["figures"])
    lines += ["", _verdict(report)]
    if chart:
        lines += ["", f"![latency distributions and load ramp]({chart})"]
    lines += ["", "## Load ramp", "", *_load_rows(report.get("load"))]
    lines += ["", "## Density", "", *_density_rows(report.get("density"))]
    lines += ["", "## Steps", "", "| Step | Status | Seconds | Note |", "|---|---|---:|---|"]
    for name, step in report["steps"].items():
        note = str(step.get("error", "")).replace("\n", " ")[:200]
        lines.append(f"| {name} | {step.get('status')} | {_fmt(step.get('seconds'))} | {note} |")
    lines += ["", "Raw JSON of every step: `raw/<step>.json`; the whole report: `report.json`."]
    return "\n".join(lines) + "\n"


def render_readme(report: dict[str, Any]) -> str:
    """The figures block of the README's Performance section (between its bench markers)."""
    meta = report["meta"]
    machine = meta.get("machine", {})
    free = machine.get("free_h", "").splitlines()
    load = report.get("load") or {}
    bend = load.get("bend")
    lines = [
        f"Run {meta.get('started_at', '?')} ({meta.get('mode')} mode, "
        f"{_fmt(meta.get('seconds'), 's')}), `{meta.get('command')}`; machine quiet (no other "
        f"test run or VM): {meta.get('quiet')}; load average {meta.get('load_before')} before, "
        f"{meta.get('load_after')} after.",
        f"Machine: `nproc` {machine.get('nproc')}, CPU `{machine.get('cpu_model')}` "
        f"(/proc/cpuinfo), kernel {machine.get('kernel')}, `free -h`:",
        "",
        "```",
        *free,
        "```",
        "",
        *_figure_rows(report["figures"]),
        "",
    ]
    if load.get("levels"):
        ramp = ", ".join(
            f"{level['concurrency']}: {_fmt(level['executes_per_s'])}/s p99 "
            f"{_fmt(level['latency_ms'].get('p99'), 'ms')}"
            for level in load["levels"]
        )
        lines.append(
            f"Load ramp ({load.get('chats')} chats x {load.get('executes_per_chat_per_level')} "
            f"executes per level, HTTP; concurrency: executes/s, p99): {ramp}. "
            + (
                f"Latency bends at concurrency {bend['concurrency']} ({bend['reason']}). "
                if bend
                else ""
            )
            + f"Errors {load.get('errors')}, lost results {load.get('lost_results')}."
        )
    lines += ["", _verdict(report)]
    if report["unavailable"]:
        lines.append(f"Not measured (unavailable): {', '.join(report['unavailable'])}.")
    for name, error in report["failed"].items():
        lines.append(f"Failed in this run: {name}: {error.splitlines()[0][-300:] if error else ''}")
    return "\n".join(lines) + "\n"


def main() -> int:
    if sys.argv[1] == "--readme":
        report = json.loads((Path(sys.argv[2]) / "report.json").read_text())
        print(render_readme(report), end="")
        return 0
    run_dir = Path(sys.argv[1])
    meta = json.loads((run_dir / "report.json").read_text())["meta"]
    steps = {path.stem: json.loads(path.read_text()) for path in sorted(run_dir.glob("raw/*.json"))}
    report = build_report(steps, meta)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    chart = "chart.png" if (run_dir / "chart.png").exists() else None
    (run_dir / "report.md").write_text(render_markdown(report, chart))
    print(run_dir / "report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
