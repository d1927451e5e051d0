"""The report's chart: latency distributions and the load ramp, one PNG (matplotlib, Agg).

    uv run python -m bench.chart bench/results/<run>      # redraw chart.png from raw/*.json

Panels: (1) HTTP execute latency per concurrency level of the load ramp, as distribution curves;
(2) the ramp itself, executes per second and p50/p99 latency against concurrency, with the bend
marked; (3) gRPC Execute latency (one caller, open loop, closed loop) against the floor of a bare
``docker exec`` and the runtimes' own round trips.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _ecdf(axis: Any, samples: list[float], label: str, **style: Any) -> None:
    if not samples:
        return
    ordered = sorted(samples)
    fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
    axis.step(ordered, fractions, where="post", label=label, **style)


def _data(steps: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    data = steps.get(name, {}).get("data")
    return data if isinstance(data, dict) else {}


def _dig(data: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _load_distributions(axis: Any, load: dict[str, Any]) -> None:
    samples = load.get("samples_ms", {})
    colors = plt.get_cmap("viridis")
    for index, (level, values) in enumerate(samples.items()):
        _ecdf(axis, values, f"c={level}", color=colors(index / max(1, len(samples) - 1)))
    axis.set_xscale("log")
    axis.set_xlabel("latency (ms, log)")
    axis.set_ylabel("fraction of executes")
    axis.set_title("HTTP execute latency per concurrency")
    if samples:
        axis.legend(fontsize=8, loc="lower right")
    else:
        axis.text(0.5, 0.5, "no load samples", ha="center", transform=axis.transAxes)


def _load_ramp(axis: Any, load: dict[str, Any]) -> None:
    levels = load.get("levels", [])
    if not levels:
        axis.text(0.5, 0.5, "no load ramp", ha="center", transform=axis.transAxes)
        return
    concurrency = [level["concurrency"] for level in levels]
    axis.plot(concurrency, [level["executes_per_s"] for level in levels], "o-", color="C0")
    axis.set_xscale("log", base=2)
    axis.set_xticks(concurrency, [str(value) for value in concurrency])
    axis.set_xlabel("concurrent callers")
    axis.set_ylabel("executes/s", color="C0")
    axis.set_ylim(bottom=0)
    latency = axis.twinx()
    for key, color in (("p50", "C1"), ("p99", "C3")):
        latency.plot(
            concurrency,
            [level["latency_ms"].get(key) for level in levels],
            "s--",
            color=color,
            label=f"{key} latency",
        )
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms, log)")
    latency.legend(fontsize=8, loc="upper left")
    bend = load.get("bend")
    if bend:
        axis.axvline(bend["concurrency"], color="grey", linestyle=":")
        axis.text(bend["concurrency"], 0, " bend", color="grey", va="bottom")
    axis.set_title(f"Load ramp ({load.get('chats')} chats)")


def _grpc_and_floors(axis: Any, steps: dict[str, dict[str, Any]]) -> None:
    grpc = _data(steps, "grpc").get("samples_ms", {})
    for (key, label), color in zip(
        (("serial", "gRPC, one caller"), ("open_loop", "gRPC, open loop"),
         ("closed_loop", "gRPC, closed loop")),
        ("C0", "C2", "C4"),
        strict=True,
    ):  # fmt: skip
        _ecdf(axis, grpc.get(key, []), label, color=color)
    marks = (
        ("floors", "docker.docker_exec_true_ms.p50", "bare docker exec p50", "k"),
        ("docker_runtime", "execute_print1_ms.p50", "Docker runtime round trip p50", "C1"),
        ("qemu_runtime", "execute_round_trip_ms.p50", "QEMU runtime round trip p50", "C3"),
        ("http", "p50_ms", "HTTP p50 (16 chats)", "C5"),
    )
    for step, path, label, color in marks:
        value = _dig(_data(steps, step), path)
        if isinstance(value, int | float) and value > 0:
            axis.axvline(value, color=color, linestyle=":", label=label)
    axis.set_xscale("log")
    axis.set_xlabel("latency (ms, log)")
    axis.set_ylabel("fraction of executes")
    axis.set_title("Execute latency vs floors")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, loc="lower right")


def draw(steps: dict[str, dict[str, Any]], path: Path) -> str:
    """Draw the chart to ``path``; returns its file name for the report's link."""
    load = _data(steps, "load")
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    _load_distributions(axes[0], load)
    _load_ramp(axes[1], load)
    _grpc_and_floors(axes[2], steps)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path.name


def main() -> int:
    run_dir = Path(sys.argv[1])
    steps = {item.stem: json.loads(item.read_text()) for item in sorted(run_dir.glob("raw/*.json"))}
    print(run_dir / draw(steps, run_dir / "chart.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
