"""gVisor against runc on the same sandbox image; prints one JSON object.

Per OCI runtime (runc, runsc as `scripts/setup.sh gvisor` registers it):
- a new sandbox's first result: create + execute print(1), median over --starts;
- execute round trip for print(1) on an existing sandbox (p50/p99);
- a bare `docker run --rm --runtime=R IMAGE python3 -c 'print(1)'` (median), for reference;
- the agent's per-execution process sweep when the execution left nothing: the /proc walk plus
  the quiet check (/proc/loadavg under runc; under gVisor, whose loadavg has no last pid, a
  probe thread before and after), timed inside a sandbox with the agent's own functions, and
  its share of the execute p50.

    uv run python -m bench.bench_gvisor [--executes 300] [--starts 5]
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import docker

from adapter.docker.image import ensure_docker_image
from adapter.docker.runtime import LABEL_INSTANCE, DockerSandboxConfig, DockerSandboxRuntime
from adapter.logging import ServiceLogger, configure_logging
from domain.execution import ExecutionRequest
from entrypoint.settings import Settings

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
RUNTIMES = ("runc", "runsc")
PRINT_1 = ("python3", "-c", "print(1)")

# Runs inside the sandbox (as root, like the agent): a sweep that finds nothing, 300 times.
SWEEP_TIMER = """
import statistics, sys, time
sys.path.insert(0, '/opt/sandboxd')
import agent
samples = []
for _ in range(300):
    started = time.perf_counter()
    mark = agent._pid_mark()
    agent._strays(1, set(), 1000)
    agent._no_pid_since(mark)
    samples.append(time.perf_counter() - started)
print(statistics.median(samples) * 1e6)
"""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bare_run_s(image: str, runtime: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [DOCKER, "run", "--rm", f"--runtime={runtime}", "--network", "none", image, *PRINT_1],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def sweep_us(container_id: str) -> float:
    done = subprocess.run(
        [DOCKER, "exec", container_id, "python3", "-c", SWEEP_TIMER],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(done.stdout.strip())


def measure(
    client: docker.APIClient, image: str, runtime_name: str, args: argparse.Namespace
) -> dict[str, Any]:
    instance_id = f"bench-{uuid4().hex[:10]}"
    data_dir = Path(tempfile.mkdtemp(prefix="sbxg-", dir="/tmp"))
    config = DockerSandboxConfig(
        image=image, instance_id=instance_id, data_dir=data_dir, runtime=runtime_name
    )
    runtime = DockerSandboxRuntime(client, config, ServiceLogger("bench"))
    request = ExecutionRequest("print(1)")
    now = datetime.now(UTC)
    try:
        first_results, bare_runs = [], []
        for _ in range(args.starts):
            started = time.perf_counter()
            session = runtime.create(
                session_id=uuid4(),
                chat_id=uuid4(),
                created_at=now,
                expires_at=now + timedelta(minutes=5),
            )
            result = runtime.execute(session.container_id, request)
            first_results.append(time.perf_counter() - started)
            assert result.stdout == "1\n", result
            runtime.stop(session.container_id)
            bare_runs.append(bare_run_s(image, runtime_name))

        session = runtime.create(
            session_id=uuid4(), chat_id=uuid4(), created_at=now, expires_at=now + timedelta(1)
        )
        for _ in range(30):
            runtime.execute(session.container_id, request)
        round_trips = []
        for _ in range(args.executes):
            started = time.perf_counter()
            result = runtime.execute(session.container_id, request)
            round_trips.append(time.perf_counter() - started)
            assert result.stdout == "1\n", result
        sweep = sweep_us(session.container_id)
        runtime.stop(session.container_id)
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
    p50_ms = statistics.median(round_trips) * 1000
    return {
        "first_result_ms": {
            "samples": len(first_results),
            "median": round(statistics.median(first_results) * 1000, 1),
            "min": round(min(first_results) * 1000, 1),
            "max": round(max(first_results) * 1000, 1),
        },
        "execute_print1_ms": {
            "samples": len(round_trips),
            "p50": round(p50_ms, 3),
            "p99": round(percentile(round_trips, 0.99) * 1000, 3),
        },
        "bare_docker_run_rm_python_print1_ms": round(statistics.median(bare_runs) * 1000, 1),
        "process_sweep_p50_us": round(sweep, 1),
        "process_sweep_share_of_execute_p50": round(sweep / 1000 / p50_ms, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--executes", type=int, default=300)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    configure_logging("warning")
    client = docker.APIClient(version="auto", timeout=120)
    registered = set(client.info().get("Runtimes") or {})
    missing = [name for name in RUNTIMES if name not in registered]
    if missing:
        print(f"the Docker engine lacks {missing}: run scripts/setup.sh gvisor", file=sys.stderr)
        return 2
    image = ensure_docker_image(client, Settings().data_dir)
    report: dict[str, Any] = {"image": image}
    for name in RUNTIMES:
        report[name] = measure(client, image, name, args)
    runc, runsc = report["runc"], report["runsc"]
    report["runsc_vs_runc"] = {
        "first_result_ratio": round(
            runsc["first_result_ms"]["median"] / runc["first_result_ms"]["median"], 2
        ),
        "execute_p50_ratio": round(
            runsc["execute_print1_ms"]["p50"] / runc["execute_print1_ms"]["p50"], 2
        ),
    }
    client.close()
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
