"""A new QEMU chat's first ``import pandas, matplotlib.pyplot``: where its time goes, what the
preload costs per idle VM; prints one JSON object.

    uv run python -m bench.qemu_first_import [--memory-mb N] [--preload MOD,MOD] [--idle-vms N]

Defaults: the service's settings (SANDBOXD_QEMU_MEMORY_MB, SANDBOXD_QEMU_PRELOAD). For one
configuration it measures: the snapshot build and its size; in a VM restored from it, the first
``import pandas, matplotlib.pyplot as plt`` in the chat's interpreter, then the same import in
a fresh python process of that VM (page cache warm: what a cold interpreter costs once the
files are read, i.e. bytecode and relocation work rather than disk); and the host RSS of idle
restored VMs (the density cost). Needs the image set; VMs live in a temporary directory.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from uuid import uuid4

from adapter.logging import ServiceLogger, configure_logging
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.runtime import QemuSandboxRuntime
from bench.common import emit
from domain.execution import ExecutionRequest
from entrypoint.settings import Settings
from testkit.qemu import create_vm

IMPORT = "import pandas, matplotlib.pyplot as plt"
FRESH_PROCESS = (
    "import subprocess, time\nt0 = time.perf_counter()\n"
    f"subprocess.run(['python3', '-c', {IMPORT!r}], check=True)\n"
    "print(round(time.perf_counter() - t0, 3))"
)


def _rss_mib(data_dir: Path, container_id: str) -> float:
    pid = int((data_dir / "vms" / container_id / "qemu.pid").read_text())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-mb", type=int, default=settings.qemu.memory_mb)
    parser.add_argument("--preload", default=settings.qemu.preload)
    parser.add_argument("--idle-vms", type=int, default=2)
    args = parser.parse_args()
    configure_logging("warning", "json")
    data_dir = Path(tempfile.mkdtemp(prefix="sbxfirst-", dir="/tmp"))
    preload = tuple(name.strip() for name in args.preload.split(",") if name.strip())
    config = QemuSandboxConfig(
        data_dir=data_dir,
        instance_id=f"bench-{uuid4().hex[:8]}",
        memory_mb=args.memory_mb,
        accel=settings.qemu.accel,
        image_dir=settings.data_dir,
        preload=preload,
    )
    runtime = QemuSandboxRuntime(config, ServiceLogger("bench"))
    try:
        t0 = time.perf_counter()
        snapshot = runtime.prepare_snapshot()
        snapshot_build_s = time.perf_counter() - t0
        vm = create_vm(runtime).container_id
        t0 = time.perf_counter()
        first = runtime.execute(vm, ExecutionRequest(code=IMPORT, timeout_s=300))
        first_import_s = time.perf_counter() - t0
        assert first.exit_code == 0, first
        fresh = runtime.execute(vm, ExecutionRequest(code=FRESH_PROCESS, timeout_s=300))
        assert fresh.exit_code == 0, fresh
        runtime.stop(vm)
        idle = [create_vm(runtime).container_id for _ in range(args.idle_vms)]
        time.sleep(3)
        rss = [_rss_mib(data_dir, vm_id) for vm_id in idle]
        emit(
            {
                "accel": runtime.accelerator,
                "memory_mb": args.memory_mb,
                "preload": list(preload),
                "snapshot_build_s": round(snapshot_build_s, 1),
                "snapshot_mb": round(Path(snapshot).stat().st_size / 2**20, 1) if snapshot else 0,
                "first_import_in_new_chat_s": round(first_import_s, 2),
                "same_import_fresh_process_warm_page_cache_s": float(fresh.stdout.strip()),
                "idle_vm_host_rss_mib": round(statistics.fmean(rss), 1),
            }
        )
    finally:
        for item in runtime.list_managed():
            runtime.stop(item.container_id)
        runtime.close()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
