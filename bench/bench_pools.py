"""Warm pools: a new chat's first result through HTTP with a warm pool vs pools off, a burst of
2x the pool size, and host memory per idle pooled sandbox (Docker or QEMU).

    uv run python -m bench.bench_pools [--size 3] [--samples 8] [--runtime docker|qemu]

Each mode runs a real ``sandboxd serve`` (PostgreSQL store; Docker sandboxes, or QEMU microVMs
restored from the memory snapshot). Warm: the default pool (SANDBOXD_POOL_SIZE) is filled, then
each sample is one new chat's first execute, measured from send to response, and its sandbox is
then deleted; the next sample starts SETTLE_S after the pool is full again, so every sample is
a claim from a full pool. Off: the same with no
pool (every sandbox started on demand). Burst: 2 x size new chats at once on a full pool: the
pool drains, the rest start on demand. Memory per idle member: Docker, the container's cgroup
memory less its inactive page cache, as Docker reports it; QEMU, the PSS of the member's
qemu-system process (shared pages of the snapshot and base image split among the VMs that map
them). Prints JSON with the machine's load average (the figures move with it). Targets: warm p50
<= 20 ms and <= 0.2 x the p50 with pools off.
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
    proc_memory_kb,
    qemu_unavailable,
    running_service,
    sigterm_as_interrupt,
    summary_ms,
)
from testkit.service import API_KEY, ServiceProcess

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = json.dumps({"code": "print(1)"}).encode()
# Each sample starts this long after the pool is full again (or after the previous sample, with
# pools off): a new chat meets a settled host, not the tail of the previous one's refill.
SETTLE_S = 0.5
CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0/current_clocksource"


def pool_status(service: ServiceProcess) -> dict[str, int]:
    response = httpx.get(f"{service.http_url}/v1/pools/default", headers=AUTH, timeout=30)
    response.raise_for_status()
    return dict(response.json()["status"])


def wait_full(service: ServiceProcess, size: int, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pool_status(service)["available"] < size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not fill:\n{service.log_tail()}")
        time.sleep(0.05)


async def first_result(port: int, chat: uuid.UUID) -> float:
    connection = await KeepAliveConnection.open(port, API_KEY)
    try:
        started = time.perf_counter()
        status, payload = await connection.post(f"/v1/chats/{chat}/executions", BODY)
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"execute failed: {status} {payload[:300]!r}")
    return elapsed


def end_chats(service: ServiceProcess, chats: list[uuid.UUID]) -> None:
    """Delete the chats' sandboxes: the host carries only the pool between samples."""
    for chat in chats:
        url = f"{service.http_url}/v1/chats/{chat}/sandbox"
        httpx.delete(url, headers=AUTH, timeout=120).raise_for_status()


def sequential(service: ServiceProcess, samples: int, size: int | None) -> list[float]:
    latencies = []
    for _ in range(samples):
        if size is not None:
            wait_full(service, size)
        time.sleep(SETTLE_S)
        chat = uuid.uuid4()
        latencies.append(asyncio.run(first_result(service.http_port, chat)))
        end_chats(service, [chat])
    return latencies


def burst(service: ServiceProcess, count: int) -> list[float]:
    chats = [uuid.uuid4() for _ in range(count)]

    async def all_at_once() -> list[float]:
        return list(
            await asyncio.gather(*(first_result(service.http_port, chat) for chat in chats))
        )

    latencies = asyncio.run(all_at_once())
    end_chats(service, chats)
    return latencies


def guest_clocksource(service: ServiceProcess) -> str:
    """The clocksource of one more chat's VM (restored from this run's snapshot, like every
    member): with refined-jiffies every guest clock, sleep and poll timeout moves in 4 ms steps
    and the figures are not comparable (adapter/qemu/boot_plan.py, tsc=reliable)."""
    chat = uuid.uuid4()
    url = f"{service.http_url}/v1/chats/{chat}/executions"
    code = f"print(open({CLOCKSOURCE!r}).read().strip())"
    response = httpx.post(url, headers=AUTH, json={"code": code}, timeout=120)
    response.raise_for_status()
    end_chats(service, [chat])
    return str(response.json()["stdout"]).strip()


def chat_sandboxes(service: ServiceProcess) -> set[str]:
    """The sandboxes of the benchmark's chats (all made with its one key, so it lists them)."""
    chats = httpx.get(f"{service.http_url}/v1/sandboxes", headers=AUTH, timeout=30).json()
    return {item["container_id"] for item in chats["items"]}


def idle_member_memory_mb(service: ServiceProcess) -> list[float]:
    """Host memory of each sandbox no chat has (the idle members), in MiB."""
    if service.runtime == "qemu":
        return idle_vm_memory_mb(service)
    taken = chat_sandboxes(service)
    usage = []
    for container in service.containers(docker.from_env()):
        if container.id in taken:  # type: ignore[attr-defined]
            continue
        stats = container.stats(stream=False)  # type: ignore[attr-defined]
        memory = stats.get("memory_stats", {})
        # Page cache is reclaimable: count what the sandbox really holds.
        cache = memory.get("stats", {}).get("inactive_file", 0)
        usage.append(round((memory.get("usage", 0) - cache) / 2**20, 2))
    return usage


def idle_vm_memory_mb(service: ServiceProcess) -> list[float]:
    taken = chat_sandboxes(service)
    usage = []
    for vm_id, work_dir in service.vm_dirs().items():
        if vm_id in taken:
            continue
        _, pss_kb = proc_memory_kb(int((work_dir / "qemu.pid").read_text()))
        usage.append(round(pss_kb / 1024, 2))
    return usage


def warm_run(size: int, samples: int, settings: dict[str, Any]) -> dict[str, Any]:
    with running_service("pools", pool_size=str(size), **settings) as service:
        wait_full(service, size)
        memory = idle_member_memory_mb(service)
        latencies = sequential(service, samples, size)
        wait_full(service, size)
        time.sleep(SETTLE_S)
        burst_latencies = burst(service, 2 * size)
        metrics = httpx.get(f"{service.http_url}/metrics", headers=AUTH, timeout=30).text
        # After the metrics: this chat's claim is not counted in them.
        clock = guest_clocksource(service) if service.runtime == "qemu" else None
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
        **({"guest_clocksource": clock} if clock else {}),
    }


def cold_run(samples: int, settings: dict[str, Any]) -> dict[str, Any]:
    with running_service("nopool", **settings) as service:
        latencies = sequential(service, samples, None)
    return {"first_result_ms": summary_ms(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--runtime", choices=("docker", "qemu"), default="docker")
    args = parser.parse_args()
    sigterm_as_interrupt()
    settings = runtime_settings(args.runtime)
    if settings is None:
        return 1
    warm = warm_run(args.size, args.samples, settings)
    cold = cold_run(args.samples, settings)
    warm_p50 = warm["first_result_ms"]["p50"]
    cold_p50 = cold["first_result_ms"]["p50"]
    emit(
        {
            "benchmark": "pools",
            "runtime": args.runtime,
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


def runtime_settings(runtime: str) -> dict[str, Any] | None:
    """The service settings of the runtime; None (and the reason printed) when it cannot run."""
    if runtime == "docker":
        return {"runtime": "docker"}
    from testkit.runtime import image_data_dir

    image_dir = image_data_dir()
    reason = qemu_unavailable(image_dir)
    if reason is not None:
        emit({"benchmark": "pools", "runtime": "qemu", "unavailable": reason})
        return None
    return {"runtime": "qemu", "qemu_image_dir": image_dir}


if __name__ == "__main__":
    raise SystemExit(main())
