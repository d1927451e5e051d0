"""QEMU part of bench.bench_environment (package environments on microVMs).

Two services (runtimes with their own data directories over the same image set) share one
bucket: A builds the environment disk cold (host download, offline install in a build VM) and
uploads it; B gets it from S3 (download, zstd decompress, re-point at its base, qemu-img check).
Both stores run with the memory snapshot off so that the ratio compares the disk alone; the
snapshot a host then takes of either (one cold boot) is reported on its own. Then a new chat's
first result (create, restored from the snapshot, + ``print(1)``) from the environment vs from
the base image, alternated, medians.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from uuid import uuid4

from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.environment import QemuEnvironmentConfig, QemuEnvironmentStore
from adapter.qemu.runtime import QemuSandboxRuntime
from adapter.s3.artifact_store import S3ArtifactStore
from domain.environment import Environment
from domain.execution import ExecutionRequest, Language
from entrypoint.settings import SERVICE_VERSION, Settings
from testkit.qemu import create_vm
from usecase.ports import Logger


def _first_result_s(runtime: QemuSandboxRuntime, key: str | None) -> float:
    """Create (restored from the snapshot) + first ``print(1)`` of a new chat; VM stopped after."""
    started = time.monotonic()
    session = create_vm(runtime, key)
    try:
        result = runtime.execute(session.container_id, ExecutionRequest("print(1)"))
        seconds = time.monotonic() - started
        assert result.stdout.strip() == "1", result
    finally:
        runtime.stop(session.container_id)
    return seconds


def package_environments_qemu(
    artifacts: S3ArtifactStore, packages: tuple[str, ...], rounds: int, logger: Logger
) -> dict:
    settings = Settings()
    scratch = Path(tempfile.mkdtemp(prefix="sbx-bench-qenv-", dir="/tmp"))
    runtimes: list[QemuSandboxRuntime] = []

    def service(name: str) -> tuple[QemuSandboxRuntime, QemuEnvironmentStore]:
        runtime = QemuSandboxRuntime(
            QemuSandboxConfig(
                data_dir=scratch / name,
                instance_id=f"bench-{uuid4().hex[:8]}",
                memory_mb=settings.qemu.memory_mb,
                vcpus=settings.qemu.vcpus,
                accel=settings.qemu.accel,
                image_dir=settings.qemu.image_dir or settings.data_dir,
                preload=(),
            ),
            logger,
        )
        runtimes.append(runtime)
        config = QemuEnvironmentConfig(service_version=SERVICE_VERSION, snapshot=False)
        return runtime, QemuEnvironmentStore(runtime, config, logger, artifacts=artifacts)

    environment = Environment(Language.PYTHON, packages)
    try:
        _runtime_a, store_a = service("a")
        started = time.monotonic()
        built = store_a.ensure(environment)
        cold_build = time.monotonic() - started
        store_a.wait_for_uploads()

        runtime_b, store_b = service("b")
        started = time.monotonic()
        loaded = store_b.ensure(environment)
        l3 = time.monotonic() - started
        assert loaded.key == built.key

        started = time.monotonic()
        runtime_b.prepare_snapshot(environment_key=loaded.key)
        environment_snapshot = time.monotonic() - started
        runtime_b.prepare_snapshot()
        _first_result_s(runtime_b, None)  # warm the host's page cache for both alike
        _first_result_s(runtime_b, loaded.key)
        # Alternated, so that drift in the shared machine's load hits both alike.
        base_times, env_times = [], []
        for _ in range(rounds):
            base_times.append(_first_result_s(runtime_b, None))
            env_times.append(_first_result_s(runtime_b, loaded.key))
        base_first, env_first = statistics.median(base_times), statistics.median(env_times)
        return {
            "packages": list(packages),
            "accelerator": runtime_b.accelerator,
            "disk_mb": round(built.size_bytes / 1e6, 1),
            "first_result_base_s": round(base_first, 3),
            "first_result_environment_s": round(env_first, 3),
            "first_result_ratio": round(env_first / base_first, 2),
            "first_result_target": "<= 1.2",
            "first_result_rounds": rounds,
            "cold_build_s": round(cold_build, 2),
            "l3_download_decompress_adopt_s": round(l3, 2),
            "l3_vs_cold_build_ratio": round(l3 / cold_build, 3),
            "l3_target": "<= 0.5",
            "environment_snapshot_s": round(environment_snapshot, 2),
            "note": "build and L3 without the memory snapshot; it follows either, once per host",
        }
    finally:
        for runtime in runtimes:
            for item in runtime.list_managed():
                runtime.stop(item.container_id)
            runtime.close()
        shutil.rmtree(scratch, ignore_errors=True)
