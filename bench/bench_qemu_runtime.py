"""Benchmark of the QEMU microVM runtime; prints one JSON object.

    uv run python -m bench.bench_qemu_runtime [--cold N] [--restores N] [--round-trips N]

Measures, on the accelerator the runtime picks (TCG on these machines):
- cold boot to a ready agent (snapshots off);
- snapshot restore to the first result (create + first execution, snapshots on);
- execute round trip of a trivial Python statement in one VM (p50, p90), and of PRINT_LOOP
  (2,000 print() calls: each write woke the guest agent until output was polled; 1.7 s then);
- the first ``import pandas, matplotlib.pyplot`` + plot + savefig in a new chat (restored VM),
  and the snapshot's size (both grow/shrink with QemuSandboxConfig.preload);
- host resident memory (VmRSS of the QEMU process) and CPU per idle VM.
Needs the image set (``sandboxd image build --runtime qemu``); VMs live in a temporary directory
and are all stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from adapter.logging import ServiceLogger, configure_logging
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.runtime import QemuSandboxRuntime
from domain.execution import ExecutionRequest
from entrypoint.settings import Settings

PRINT_LOOP = "for i in range(2000): print(i)"
FIRST_PLOT = (
    "import pandas, matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.savefig('/workspace/a.png')\n"
)


def _create(runtime: QemuSandboxRuntime) -> str:
    now = datetime.now(UTC)
    session = runtime.create(
        session_id=uuid4(), chat_id=uuid4(), created_at=now, expires_at=now + timedelta(hours=1)
    )
    return session.container_id


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _rss_kib(data_dir: Path, container_id: str) -> int:
    pid = int((data_dir / "vms" / container_id / "qemu.pid").read_text())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_s(data_dir: Path, container_id: str) -> float:
    pid = int((data_dir / "vms" / container_id / "qemu.pid").read_text())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--restores", type=int, default=10)
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--idle-vms", type=int, default=3)
    args = parser.parse_args()
    configure_logging("warning", "json")
    settings = Settings()
    image_dir = settings.data_dir
    data_dir = Path(tempfile.mkdtemp(prefix="sbxbench-", dir="/tmp"))
    logger = ServiceLogger("bench")

    def runtime(snapshot: bool) -> QemuSandboxRuntime:
        config = QemuSandboxConfig(
            data_dir=data_dir,
            instance_id=f"bench-{uuid4().hex[:8]}",
            memory_mb=settings.qemu.memory_mb,
            preload=tuple(name for name in settings.qemu.preload.split(",") if name),
            vcpus=settings.qemu.vcpus,
            accel=settings.qemu.accel,
            snapshot=snapshot,
            image_dir=image_dir,
        )
        return QemuSandboxRuntime(config, logger)

    cold_rt, warm_rt = runtime(False), runtime(True)
    started: list[tuple[QemuSandboxRuntime, str]] = []
    try:
        cold: list[float] = []
        for _ in range(args.cold):
            t0 = time.perf_counter()
            vm = _create(cold_rt)
            cold.append(time.perf_counter() - t0)
            cold_rt.stop(vm)

        t0 = time.perf_counter()
        snapshot_file = warm_rt.prepare_snapshot()
        snapshot_build_s = time.perf_counter() - t0
        snapshot_bytes = Path(snapshot_file).stat().st_size if snapshot_file else 0

        vm = _create(warm_rt)
        t0 = time.perf_counter()
        result = warm_rt.execute(vm, ExecutionRequest(code=FIRST_PLOT, timeout_s=300))
        first_plot_s = time.perf_counter() - t0
        assert result.exit_code == 0, result
        warm_rt.stop(vm)

        restore_to_result: list[float] = []
        restore_create: list[float] = []
        for _ in range(args.restores):
            t0 = time.perf_counter()
            vm = _create(warm_rt)
            t1 = time.perf_counter()
            result = warm_rt.execute(vm, ExecutionRequest(code="print('ready')"))
            t2 = time.perf_counter()
            assert result.stdout == "ready\n", result
            restore_create.append(t1 - t0)
            restore_to_result.append(t2 - t0)
            warm_rt.stop(vm)

        vm = _create(warm_rt)
        started.append((warm_rt, vm))
        round_trips: list[float] = []
        request = ExecutionRequest(code="x = 1")
        for _ in range(args.round_trips):
            t0 = time.perf_counter()
            warm_rt.execute(vm, request)
            round_trips.append(time.perf_counter() - t0)

        print_loop: list[float] = []
        for _ in range(5):
            t0 = time.perf_counter()
            result = warm_rt.execute(vm, ExecutionRequest(code=PRINT_LOOP))
            print_loop.append(time.perf_counter() - t0)
            assert result.stdout.count("\n") == 2000, result

        for _ in range(args.idle_vms - 1):
            started.append((warm_rt, _create(warm_rt)))
        time.sleep(3)  # let them settle into idle
        rss_mib = [_rss_kib(data_dir, vm_id) / 1024 for _, vm_id in started]
        cpu_before = [_cpu_s(data_dir, vm_id) for _, vm_id in started]
        time.sleep(5)
        idle_cpu_pct = [
            (_cpu_s(data_dir, vm_id) - before) / 5 * 100
            for (_, vm_id), before in zip(started, cpu_before, strict=True)
        ]

        print(
            json.dumps(
                {
                    "accel": warm_rt.accelerator,
                    "memory_mb": settings.qemu.memory_mb,
                    "preload": settings.qemu.preload,
                    "vcpus": settings.qemu.vcpus,
                    "cold_boot_to_agent_ready_s": {
                        "n": len(cold),
                        "median": round(statistics.median(cold), 3),
                        "min": round(min(cold), 3),
                        "max": round(max(cold), 3),
                    },
                    "snapshot_build_s": round(snapshot_build_s, 3),
                    "snapshot_bytes": snapshot_bytes,
                    "first_pandas_pyplot_savefig_s": round(first_plot_s, 3),
                    "snapshot_restore_to_first_result_s": {
                        "n": len(restore_to_result),
                        "median": round(statistics.median(restore_to_result), 3),
                        "p90": round(_percentile(restore_to_result, 0.9), 3),
                        "create_median": round(statistics.median(restore_create), 3),
                    },
                    "cold_vs_restore_ratio": round(
                        statistics.median(cold) / statistics.median(restore_to_result), 1
                    ),
                    "execute_round_trip_ms": {
                        "n": len(round_trips),
                        "p50": round(_percentile(round_trips, 0.5) * 1000, 2),
                        "p90": round(_percentile(round_trips, 0.9) * 1000, 2),
                    },
                    "print_loop_2000_ms_median": round(statistics.median(print_loop) * 1000, 1),
                    "idle_vm_host_rss_mib": {
                        "n": len(rss_mib),
                        "mean": round(statistics.mean(rss_mib), 1),
                        "max": round(max(rss_mib), 1),
                    },
                    "idle_vm_host_cpu_percent": round(statistics.mean(idle_cpu_pct), 2),
                },
                indent=2,
            )
        )
    finally:
        for rt, vm_id in started:
            rt.stop(vm_id)
        for rt in (cold_rt, warm_rt):
            for item in rt.list_managed():
                rt.stop(item.container_id)
            rt.close()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
