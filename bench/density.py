"""Density: how many idle sandboxes of each runtime fit in this machine's memory.

    uv run python -m bench.density [--docker 8] [--qemu 3]

Starts that many sandboxes per runtime (each with one ``print(1)`` run, so the agent and its
python interpreter are up, as in an idle chat), lets them settle, and measures each one's host
memory from /proc:

- Docker: every process in the container (agent + python) plus its containerd shim, which
  exists only for this sandbox; RSS and PSS (PSS shares the pages of the image's files among
  the sandboxes that map them, which is what a host full of sandboxes really pays);
- QEMU: the qemu-system process of each VM (guest RAM is its anonymous memory), restored from
  the memory snapshot as the service does by default.

"Fit" is MemAvailable at the start (less a 10 % reserve) divided by the mean PSS per sandbox;
the memory limit per sandbox gives the worst case (every sandbox filling its limit). The drop
in MemAvailable per sandbox is printed too, as a cross-check that includes kernel memory.
QEMU is reported as unavailable, with the reason, when its image set is not built.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    emit,
    mem_available_mb,
    mem_total_mb,
    proc_memory_kb,
    qemu_unavailable,
    remove_containers_of,
    sigterm_as_interrupt,
)

RESERVE = 0.10
SETTLE_S = 3.0
# A persistent directory for the QEMU snapshot: its key is checked on every use, so reusing it
# across runs only saves the boot that builds it.
QEMU_BENCH_DIR = Path(tempfile.gettempdir()) / "sandboxd-bench-qemu"


def _create(runtime: Any) -> str:
    now = datetime.now(UTC)
    session = runtime.create(
        session_id=uuid.uuid4(),
        chat_id=uuid.uuid4(),
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    return str(session.container_id)


def _ppid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def _per_sandbox(rss_kb: list[int], pss_kb: list[int]) -> dict[str, float]:
    return {
        "rss_mb_mean": round(statistics.fmean(rss_kb) / 1024, 1),
        "pss_mb_mean": round(statistics.fmean(pss_kb) / 1024, 1),
        "pss_mb_max": round(max(pss_kb) / 1024, 1),
    }


def _fit(
    available_mb: float, per_sandbox_mb: float, limit_mb: float, drop_mb: float
) -> dict[str, Any]:
    usable = available_mb * (1 - RESERVE)
    return {
        "idle_sandboxes_fit": int(usable // per_sandbox_mb) if per_sandbox_mb else None,
        # Noisy while other work runs on the machine, but it counts kernel memory PSS misses.
        "fit_by_available_drop": int(usable // drop_mb) if drop_mb > 1 else None,
        "at_memory_limit_fit": int(usable // limit_mb),
        "memory_limit_mb": limit_mb,
    }


def docker_density(count: int) -> dict[str, Any]:
    import docker

    from adapter.docker.image import ensure_docker_image
    from adapter.docker.runtime import DockerSandboxConfig, DockerSandboxRuntime
    from adapter.logging import ServiceLogger
    from domain.execution import ExecutionRequest
    from entrypoint.settings import Settings

    settings = Settings()
    client = docker.APIClient(version="auto", timeout=120)
    image = settings.docker.image or ensure_docker_image(
        client, settings.data_dir, settings.docker.image_repository
    )
    instance_id = f"bench-density-{uuid.uuid4().hex[:10]}"
    data_dir = Path(tempfile.mkdtemp(prefix="sandboxd-density-", dir="/tmp"))
    runtime = DockerSandboxRuntime(
        client,
        DockerSandboxConfig(
            image=image,
            instance_id=instance_id,
            data_dir=data_dir,
            memory_mb=settings.docker.memory_mb,
        ),
        ServiceLogger("bench"),
    )
    try:
        available_before = mem_available_mb()
        ids = []
        for _ in range(count):
            container_id = _create(runtime)
            result = runtime.execute(container_id, ExecutionRequest("print(1)"))
            if result.stdout != "1\n":
                raise RuntimeError(f"sandbox answered {result!r}")
            ids.append(container_id)
        time.sleep(SETTLE_S)
        available_after = mem_available_mb()
        rss, pss, shim_rss, shim_pss, processes = [], [], [], [], []
        for container_id in ids:
            top = client.top(container_id, ps_args="-o pid,comm")
            pids = [int(row[0]) for row in top["Processes"]]
            memory = [proc_memory_kb(pid) for pid in pids]
            rss.append(sum(item[0] for item in memory))
            pss.append(sum(item[1] for item in memory))
            processes = [row[1] for row in top["Processes"]]
            shim = proc_memory_kb(_ppid(min(pids)))
            shim_rss.append(shim[0])
            shim_pss.append(shim[1])
    finally:
        remove_containers_of(instance_id)
        runtime.close()
        client.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    total_pss_mb = (statistics.fmean(pss) + statistics.fmean(shim_pss)) / 1024
    drop_mb = (available_before - available_after) / count
    return {
        "sandboxes": count,
        "processes_in_sandbox": processes,
        "sandbox": _per_sandbox(rss, pss),
        "containerd_shim": _per_sandbox(shim_rss, shim_pss),
        "per_sandbox_pss_mb": round(total_pss_mb, 1),
        "mem_available_drop_mb_per_sandbox": round(drop_mb, 1),
        **_fit(available_before, total_pss_mb, settings.docker.memory_mb, drop_mb),
    }


def qemu_density(count: int) -> dict[str, Any]:
    from adapter.logging import ServiceLogger
    from adapter.qemu.config import QemuSandboxConfig
    from adapter.qemu.runtime import QemuSandboxRuntime
    from domain.execution import ExecutionRequest
    from entrypoint.settings import Settings

    settings = Settings()
    image_dir = settings.qemu.image_dir or settings.data_dir
    unavailable = qemu_unavailable(image_dir)
    if unavailable is not None:
        return {"unavailable": unavailable}
    QEMU_BENCH_DIR.mkdir(exist_ok=True)
    config = QemuSandboxConfig(
        data_dir=QEMU_BENCH_DIR,
        instance_id=f"bench-density-{uuid.uuid4().hex[:10]}",
        memory_mb=settings.qemu.memory_mb,
        vcpus=settings.qemu.vcpus,
        accel=settings.qemu.accel,
        snapshot=settings.qemu.snapshot,
        image_dir=image_dir,
    )
    runtime = QemuSandboxRuntime(config, ServiceLogger("bench"))
    try:
        started = time.perf_counter()
        snapshot = runtime.prepare_snapshot() if settings.qemu.snapshot else ""
        prepare_s = time.perf_counter() - started
        available_before = mem_available_mb()
        ids = []
        for _ in range(count):
            vm_id = _create(runtime)
            result = runtime.execute(vm_id, ExecutionRequest("print(1)"))
            if result.stdout != "1\n":
                raise RuntimeError(f"VM answered {result!r}")
            ids.append(vm_id)
        time.sleep(SETTLE_S)
        available_after = mem_available_mb()
        rss, pss = [], []
        for vm_id in ids:
            pid = int((QEMU_BENCH_DIR / "vms" / vm_id / "qemu.pid").read_text())
            memory = proc_memory_kb(pid)
            rss.append(memory[0])
            pss.append(memory[1])
        accelerator = runtime.accelerator
    finally:
        for item in runtime.list_managed():
            runtime.stop(item.container_id)
        runtime.close()
    per_vm_mb = statistics.fmean(pss) / 1024
    drop_mb = (available_before - available_after) / count
    return {
        "sandboxes": count,
        "accel": accelerator,
        "started_from": "snapshot" if snapshot else "cold boot",
        "snapshot_prepare_s": round(prepare_s, 2),
        "guest_memory_mb": settings.qemu.memory_mb,
        "sandbox": _per_sandbox(rss, pss),
        "per_sandbox_pss_mb": round(per_vm_mb, 1),
        "mem_available_drop_mb_per_sandbox": round(drop_mb, 1),
        **_fit(available_before, per_vm_mb, settings.qemu.memory_mb, drop_mb),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker", type=int, default=8, help="idle Docker sandboxes")
    parser.add_argument("--qemu", type=int, default=3, help="idle VMs; 0 skips QEMU")
    args = parser.parse_args()
    sigterm_as_interrupt()
    from adapter.logging import configure_logging

    configure_logging("warning", "json")
    report: dict[str, Any] = {
        "mem_total_mb": round(mem_total_mb()),
        "mem_available_mb": round(mem_available_mb()),
        "reserve_fraction": RESERVE,
        "docker": docker_density(args.docker),
        "qemu": qemu_density(args.qemu) if args.qemu > 0 else {"unavailable": "skipped"},
    }
    emit(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
