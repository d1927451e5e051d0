"""Benchmark of the Docker runtime; prints one JSON object.

- execute round trip for print(1) on an existing sandbox (p50/p99), against a bare
  `docker exec` in the same run (`true`, and `python3 -c 'print(1)'` for the same work);
- a new chat's first result through ExecuteCode (create + first execution), against a bare
  `docker run --rm` of the same image running python3 -c 'print(1)' (medians, interleaved);
- resident memory of one idle sandbox: the RSS of every process in it (agent + python);
- the agent's per-execution process sweep (the /proc walk that finds what an execution left),
  timed inside a sandbox with the agent's own function: its share of the execute round trip.

    uv run python -m bench.bench_docker_runtime [--executes 500] [--starts 9]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import docker

from adapter.clock import SystemClock
from adapter.docker.image import ensure_docker_image
from adapter.docker.runtime import LABEL_INSTANCE, DockerSandboxConfig, DockerSandboxRuntime
from adapter.logging import ServiceLogger, configure_logging
from domain.execution import ExecutionRequest
from entrypoint.settings import Settings
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from usecase.execute import ExecuteCode, ExecuteCodeCommand

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def rss_mb(client: docker.APIClient, container_id: str) -> tuple[float, list[str]]:
    top = client.top(container_id, ps_args="-o pid,comm")
    total_kb = 0
    names = []
    for pid, comm in top["Processes"]:
        names.append(comm)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024, names


# Runs inside the sandbox (as root, like the agent): the sweep's /proc scan, 2000 times.
SWEEP_TIMER = """
import statistics, sys, time
sys.path.insert(0, '/opt/sandboxd')
import agent
samples = []
for _ in range(2000):
    started = time.perf_counter()
    agent._strays(1, set(), 1000)
    samples.append(time.perf_counter() - started)
print(statistics.median(samples) * 1e6)
"""


def sweep_cost_us(container_id: str) -> float:
    done = subprocess.run(
        [DOCKER, "exec", container_id, "python3", "-c", SWEEP_TIMER],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executes", type=int, default=500)
    parser.add_argument("--starts", type=int, default=9)
    args = parser.parse_args()
    configure_logging("warning")

    client = docker.APIClient(version="auto", timeout=120)
    image = ensure_docker_image(client, Settings().data_dir)
    instance_id = f"bench-{uuid4().hex[:10]}"
    data_dir = Path(tempfile.mkdtemp(prefix="sbxb-", dir="/tmp"))
    logger = ServiceLogger("bench")
    runtime = DockerSandboxRuntime(
        client, DockerSandboxConfig(image=image, instance_id=instance_id, data_dir=data_dir), logger
    )
    execute_code = ExecuteCode(
        InMemorySandboxSessionRepository(),
        ProcessLocalSandboxLifecycleLocker(),
        runtime,
        SystemClock(),
        logger,
        ttl=timedelta(minutes=30),
    )
    try:
        request = ExecutionRequest("print(1)")
        first_results, docker_runs = [], []
        for _ in range(args.starts):
            started = time.perf_counter()
            execution = execute_code.execute(ExecuteCodeCommand(uuid4(), request))
            first_results.append(time.perf_counter() - started)
            assert execution.result.stdout == "1\n"
            runtime.stop(execution.session.container_id)
            docker_runs.append(timed([DOCKER, "run", "--rm", image, "python3", "-c", "print(1)"]))

        execution = execute_code.execute(ExecuteCodeCommand(uuid4(), request))
        container_id = execution.session.container_id
        for _ in range(50):
            runtime.execute(container_id, request)
        round_trips = []
        for _ in range(args.executes):
            started = time.perf_counter()
            result = runtime.execute(container_id, request)
            round_trips.append(time.perf_counter() - started)
            assert result.stdout == "1\n"
        exec_true = [timed([DOCKER, "exec", container_id, "true"]) for _ in range(30)]
        exec_python = [
            timed([DOCKER, "exec", container_id, "python3", "-c", "print(1)"]) for _ in range(30)
        ]
        sweep_us = sweep_cost_us(container_id)
        time.sleep(1)
        idle_rss, processes = rss_mb(client, container_id)
        runtime.stop(container_id)

        p50 = statistics.median(round_trips) * 1000
        exec_true_p50 = statistics.median(exec_true) * 1000
        exec_python_p50 = statistics.median(exec_python) * 1000
        first = statistics.median(first_results) * 1000
        bare_run = statistics.median(docker_runs) * 1000
        report = {
            "image": image,
            "execute_print1_ms": {
                "samples": len(round_trips),
                "p50": round(p50, 3),
                "p99": round(percentile(round_trips, 0.99) * 1000, 3),
                "target_p50": 5.0,
            },
            "process_sweep_p50_us": round(sweep_us, 1),
            "process_sweep_target_us": 1000,
            "bare_docker_exec_true_p50_ms": round(exec_true_p50, 2),
            "bare_docker_exec_python_print1_p50_ms": round(exec_python_p50, 2),
            "execute_vs_docker_exec_true_ratio": round(p50 / exec_true_p50, 4),
            "execute_vs_docker_exec_python_ratio": round(p50 / exec_python_p50, 4),
            "new_chat_first_result_ms": {
                "samples": len(first_results),
                "median": round(first, 1),
                "min": round(min(first_results) * 1000, 1),
                "max": round(max(first_results) * 1000, 1),
            },
            "bare_docker_run_rm_python_print1_ms": {
                "median": round(bare_run, 1),
                "min": round(min(docker_runs) * 1000, 1),
                "max": round(max(docker_runs) * 1000, 1),
            },
            "first_result_vs_docker_run_ratio": round(first / bare_run, 3),
            "first_result_target_ratio": 1.3,
            "idle_sandbox_rss_mb": round(idle_rss, 1),
            "idle_sandbox_processes": processes,
            "idle_rss_target_mb": 40,
        }
    finally:
        ids = subprocess.run(
            [DOCKER, "ps", "-aq", "--filter", f"label={LABEL_INSTANCE}={instance_id}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if ids:
            subprocess.run([DOCKER, "rm", "-f", *ids], capture_output=True, check=False)
        runtime.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
