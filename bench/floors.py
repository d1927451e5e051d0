"""Floors: what the bare tools cost on this machine, measured in the same run as everything else.

    uv run python -m bench.floors [--runs 10] [--execs 40] [--qemu-boots 2]

- ``docker run --rm IMAGE python3 -c 'print(1)'``: the floor of a new chat's first result;
- ``docker exec CONTAINER true`` (and ``python3 -c 'print(1)'``) in a plain running container of
  the same image: the floor that an execute on an existing sandbox is compared with;
- a QEMU cold boot of the microVM to a ready agent (snapshots off), the floor of a snapshot
  restore. Reported as unavailable, with the reason, when the QEMU image set is not built.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    DOCKER,
    INSTANCE_LABEL,
    emit,
    qemu_unavailable,
    remove_containers_of,
    sigterm_as_interrupt,
    summary_ms,
)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def docker_image() -> str:
    import docker

    from adapter.docker.image import ensure_docker_image
    from entrypoint.settings import Settings

    settings = Settings()
    if settings.docker.image:
        return settings.docker.image
    client = docker.APIClient(version="auto", timeout=600)
    try:
        return ensure_docker_image(client, settings.data_dir, settings.docker.image_repository)
    finally:
        client.close()


def docker_floors(image: str, runs: int, execs: int) -> dict[str, Any]:
    instance_id = f"bench-floors-{uuid.uuid4().hex[:10]}"
    label = f"{INSTANCE_LABEL}={instance_id}"
    try:
        # The first start after an image import pays for layer setup; it is not the floor.
        timed([DOCKER, "run", "--rm", "--label", label, image, "true"])
        run_python = [
            timed([DOCKER, "run", "--rm", "--label", label, image, "python3", "-c", "print(1)"])
            for _ in range(runs)
        ]
        container = subprocess.run(
            [DOCKER, "run", "-d", "--label", label, "--network", "none", image, "sleep", "3600"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        timed([DOCKER, "exec", container, "true"])
        exec_true = [timed([DOCKER, "exec", container, "true"]) for _ in range(execs)]
        exec_python = [
            timed([DOCKER, "exec", container, "python3", "-c", "print(1)"])
            for _ in range(max(5, execs // 2))
        ]
    finally:
        remove_containers_of(instance_id)
    return {
        "image": image,
        "docker_run_rm_python_ms": summary_ms(run_python),
        "docker_exec_true_ms": summary_ms(exec_true),
        "docker_exec_python_ms": summary_ms(exec_python),
    }


def qemu_floor(boots: int) -> dict[str, Any]:
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
    data_dir = Path(tempfile.mkdtemp(prefix="sandboxd-floors-qemu-", dir="/tmp"))
    config = QemuSandboxConfig(
        data_dir=data_dir,
        instance_id=f"bench-floors-{uuid.uuid4().hex[:10]}",
        memory_mb=settings.qemu.memory_mb,
        vcpus=settings.qemu.vcpus,
        accel=settings.qemu.accel,
        snapshot=False,
        image_dir=image_dir,
    )
    runtime = QemuSandboxRuntime(config, ServiceLogger("bench"))
    boots_s: list[float] = []
    try:
        for _ in range(boots):
            now = datetime.now(UTC)
            started = time.perf_counter()
            session = runtime.create(
                session_id=uuid.uuid4(),
                chat_id=uuid.uuid4(),
                created_at=now,
                expires_at=now + timedelta(hours=1),
            )
            boots_s.append(time.perf_counter() - started)
            result = runtime.execute(session.container_id, ExecutionRequest("print(1)"))
            if result.stdout != "1\n":
                raise RuntimeError(f"cold-booted VM answered {result!r}")
            runtime.stop(session.container_id)
        accelerator = runtime.accelerator
    finally:
        for item in runtime.list_managed():
            runtime.stop(item.container_id)
        runtime.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    ordered = sorted(boots_s)
    return {
        "accel": accelerator,
        "memory_mb": settings.qemu.memory_mb,
        "cold_boot_to_agent_ready_s": {
            "n": len(ordered),
            "median": round(ordered[len(ordered) // 2], 3),
            "min": round(ordered[0], 3),
            "max": round(ordered[-1], 3),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="docker run --rm samples")
    parser.add_argument("--execs", type=int, default=40, help="docker exec samples")
    parser.add_argument("--qemu-boots", type=int, default=2, help="0 skips the QEMU floor")
    args = parser.parse_args()
    sigterm_as_interrupt()
    from adapter.logging import configure_logging

    configure_logging("warning", "json")
    report: dict[str, Any] = {"docker": docker_floors(docker_image(), args.runs, args.execs)}
    if args.qemu_boots > 0:
        report["qemu"] = qemu_floor(args.qemu_boots)
    else:
        report["qemu"] = {"unavailable": "skipped (--qemu-boots 0)"}
    emit(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
