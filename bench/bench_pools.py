"""Warm pools: a new chat's first result through HTTP with a warm pool vs pools off, a burst of
2x the pool size, and host memory per idle pooled sandbox (Docker).

    uv run python -m bench.bench_pools [--size 4] [--samples 10]

Each mode runs a real ``sandboxd serve`` (PostgreSQL store, Docker sandboxes). Warm: the
default pool (SANDBOXD_POOL_SIZE) is filled, then each sample is one new chat's first execute,
measured from send to response; before the next sample the pool is refilled, so every sample
is a claim from a full pool. Off: the same with no pool (every sandbox started on demand).
Burst: 2 x size new chats at once on a full pool: the pool drains, the rest start on demand.
Memory: each idle member's cgroup memory usage as Docker reports it. Prints JSON. Targets:
warm p50 <= 20 ms and <= 0.2 x the p50 with pools off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

import docker
import httpx

from bench.common import (
    KeepAliveConnection,
    emit,
    running_service,
    sigterm_as_interrupt,
    summary_ms,
)
from testkit.service import API_KEY, ServiceProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = json.dumps({"code": "print(1)"}).encode()


def pool_status(service: ServiceProcess) -> dict[str, int]:
    response = httpx.get(f"{service.http_url}/v1/pools/default", headers=AUTH, timeout=30)
    response.raise_for_status()
    return dict(response.json()["status"])


def wait_full(service: ServiceProcess, size: int, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pool_status(service)["available"] < size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not fill:\n{service.log_tail()}")
        time.sleep(0.05)


async def first_result(port: int) -> float:
    connection = await KeepAliveConnection.open(port, API_KEY)
    try:
        started = time.perf_counter()
        status, payload = await connection.post(f"/v1/chats/{uuid.uuid4()}/executions", BODY)
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"execute failed: {status} {payload[:300]!r}")
    return elapsed


def sequential(service: ServiceProcess, samples: int, size: int | None) -> list[float]:
    latencies = []
    for _ in range(samples):
        if size is not None:
            wait_full(service, size)
        latencies.append(asyncio.run(first_result(service.http_port)))
    return latencies


async def burst(port: int, count: int) -> list[float]:
    return list(await asyncio.gather(*(first_result(port) for _ in range(count))))


def idle_member_memory_mb(service: ServiceProcess, client: docker.DockerClient) -> list[float]:
    """Memory usage of the containers no chat has (the idle members), in MiB."""
    chats = httpx.get(f"{service.http_url}/v1/sandboxes", headers=AUTH, timeout=30).json()
    taken = {item["container_id"] for item in chats["items"]}
    usage = []
    for container in service.containers(client):
        if container.id in taken:  # type: ignore[attr-defined]
            continue
        stats = container.stats(stream=False)  # type: ignore[attr-defined]
        memory = stats.get("memory_stats", {})
        # Page cache is reclaimable: count what the sandbox really holds.
        cache = memory.get("stats", {}).get("inactive_file", 0)
        usage.append(round((memory.get("usage", 0) - cache) / 2**20, 2))
    return usage


def warm_run(size: int, samples: int, client: docker.DockerClient) -> dict[str, Any]:
    with running_service("pools", pool_size=str(size)) as service:
        wait_full(service, size)
        memory = idle_member_memory_mb(service, client)
        latencies = sequential(service, samples, size)
        wait_full(service, size)
        burst_latencies = asyncio.run(burst(service.http_port, 2 * size))
        metrics = httpx.get(f"{service.http_url}/metrics", headers=AUTH, timeout=30).text
    claims = [
        line
        for line in metrics.splitlines()
        if line.startswith("sandboxd_pool{") and "claims" in line
    ]
    return {
        "first_result_ms": summary_ms(latencies),
        "burst": {
            "chats": 2 * size,
            "first_result_ms": summary_ms(burst_latencies),
            "fastest_half_ms": summary_ms(sorted(burst_latencies)[:size]),
            "slowest_half_ms": summary_ms(sorted(burst_latencies)[size:]),
        },
        "idle_member_memory_mb": {
            "per_member": memory,
            "mean": round(sum(memory) / len(memory), 2) if memory else None,
        },
        "pool_metrics": claims,
    }


def cold_run(samples: int) -> dict[str, Any]:
    with running_service("nopool") as service:
        latencies = sequential(service, samples, None)
    return {"first_result_ms": summary_ms(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    sigterm_as_interrupt()
    client = docker.from_env()
    warm = warm_run(args.size, args.samples, client)
    cold = cold_run(args.samples)
    warm_p50 = warm["first_result_ms"]["p50"]
    cold_p50 = cold["first_result_ms"]["p50"]
    emit(
        {
            "benchmark": "pools",
            "runtime": "docker",
            "pool_size": args.size,
            "samples": args.samples,
            "load_average": os.getloadavg(),
            "warm_pool": warm,
            "pools_off": cold,
            "ratio_p50": round(warm_p50 / cold_p50, 3),
            "targets": {
                "warm_p50_le_20ms": warm_p50 <= 20.0,
                "warm_p50_le_0_2x_off": warm_p50 <= 0.2 * cold_p50,
            },
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
