"""HTTP execute latency and throughput on existing chats, PostgreSQL store, Docker sandboxes.

    uv run python -m bench.bench_http [--chats 16] [--rate 200] [--seconds 10] [--code 'print(1)']
        [--serial 200] [--store postgresql|sqlite]

Starts a real ``sandboxd serve`` (its own instance id, data directory and a throwaway PostgreSQL
database, migrated first; or ``--store sqlite``, the embedded file), creates one sandbox per chat
and warms up. Then three phases, each with the service process's CPU time (utime + stime from
/proc) divided by the executes it served:

- serial: one caller, one chat, one execute after another (latency at concurrency 1);

- open loop (the latency figures): messages arrive at ``--rate`` per second in all, spread
  round-robin over ``--chats`` chats, whether or not earlier ones have returned (a chat-bot
  backend does not wait for other chats). Latency runs from each message's scheduled send time
  to its response, so a stall is not hidden by sending less (no coordinated omission).
- closed loop (the capacity figure): one caller per chat sends its next message as soon as the
  last returned; executes per second is the most the service did.

The load generator is a minimal HTTP/1.1 keep-alive client: it must cost far less CPU than the
service on the same two cores (httpx spends about a millisecond per request). Prints JSON, with
the service's own CPU time per execute and the machine's load average, since other work on the
machine moves these figures. Targets on a 2-core machine: p50 <= 10 ms, p99 <= 40 ms,
>= 200 executes/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from bench.common import (
    KeepAliveConnection,
    cpu_seconds,
    thread_usage,
    thread_usage_per_execute,
)
from testkit.pg import temporary_database
from testkit.service import API_KEY, ServiceProcess

ROOT = Path(__file__).resolve().parents[1]


class Pool:
    """Idle keep-alive connections; a new one is opened when all are busy."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._idle: list[KeepAliveConnection] = []
        self.opened = 0

    async def execute(self, chat: uuid.UUID, body: bytes) -> None:
        connection = self._idle.pop() if self._idle else None
        try:
            if connection is None:
                raise ConnectionResetError
            status, payload = await connection.post(f"/v1/chats/{chat}/executions", body)
        except (ConnectionError, asyncio.IncompleteReadError):
            # The server closes keep-alive connections idle for 5 s; open a fresh one.
            if connection is not None:
                connection.close()
            connection = await KeepAliveConnection.open(self._port, API_KEY)
            self.opened += 1
            status, payload = await connection.post(f"/v1/chats/{chat}/executions", body)
        self._idle.append(connection)
        if status != 200 or json.loads(payload)["exit_code"] != 0:
            raise RuntimeError(f"execute failed: {status} {payload[:300]!r}")

    def close(self) -> None:
        for connection in self._idle:
            connection.close()


def summary(latencies: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pick(fraction: float) -> float:
        index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
        return round(ordered[index] * 1000, 2)

    return {
        "executes": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "executes_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            "p50": pick(0.50),
            "p90": pick(0.90),
            "p99": pick(0.99),
            "max": pick(1.0),
            "mean": round(statistics.fmean(ordered) * 1000, 2),
        },
    }


async def open_loop(
    pool: Pool, chats: list[uuid.UUID], body: bytes, rate: float, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0

    async def one(chat: uuid.UUID, scheduled: float) -> None:
        nonlocal errors
        try:
            await pool.execute(chat, body)
        except RuntimeError:
            errors += 1
            return
        latencies.append(time.perf_counter() - scheduled)

    total = int(rate * seconds)
    tasks = []
    started = time.perf_counter()
    for index in range(total):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(chats[index % len(chats)], scheduled)))
    await asyncio.gather(*tasks)
    return {"offered_per_s": rate, **summary(latencies, time.perf_counter() - started, errors)}


async def closed_loop(
    pool: Pool, chats: list[uuid.UUID], body: bytes, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def caller(chat: uuid.UUID) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                await pool.execute(chat, body)
            except RuntimeError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(caller(chat) for chat in chats))
    return summary(latencies, time.perf_counter() - started, errors)


async def run(service: ServiceProcess, args: argparse.Namespace) -> dict[str, Any]:
    assert service.process is not None
    pid = service.process.pid
    pool = Pool(service.http_port)
    chats = [uuid.uuid4() for _ in range(args.chats)]
    body = json.dumps({"code": args.code}).encode()
    try:
        # Sandbox creation is not what is measured: every chat has its sandbox first.
        await asyncio.gather(*(pool.execute(chat, body) for chat in chats))
        for _ in range(args.warmup):
            await asyncio.gather(*(pool.execute(chat, body) for chat in chats))

        serial: list[float] = []
        cpu_before = cpu_seconds(pid)
        for _ in range(args.serial):
            sent = time.perf_counter()
            await pool.execute(chats[0], body)
            serial.append(time.perf_counter() - sent)
        serial_cpu = cpu_seconds(pid) - cpu_before

        cpu_before = cpu_seconds(pid)
        opened = await open_loop(pool, chats, body, args.rate, args.seconds)
        opened["service_cpu_ms_per_execute"] = round(
            (cpu_seconds(pid) - cpu_before) / max(1, opened["executes"]) * 1000, 3
        )
        cpu_before, threads_before = cpu_seconds(pid), thread_usage(pid)
        closed = await closed_loop(pool, chats, body, args.seconds)
        closed["service_cpu_ms_per_execute"] = round(
            (cpu_seconds(pid) - cpu_before) / max(1, closed["executes"]) * 1000, 3
        )
        closed["threads_per_execute"] = thread_usage_per_execute(
            threads_before, thread_usage(pid), closed["executes"]
        )
        return {
            "serial": {
                **summary(serial, sum(serial), 0),
                "service_cpu_ms_per_execute": round(serial_cpu / max(1, len(serial)) * 1000, 3),
            },
            "open_loop": opened,
            "closed_loop": closed,
            "connections": pool.opened,
        }
    finally:
        pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0, help="open loop: executes/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--warmup", type=int, default=10, help="rounds over all chats")
    parser.add_argument("--code", default="print(1)")
    parser.add_argument("--serial", type=int, default=200, help="executes, one at a time")
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--image", default="", help="SANDBOXD_DOCKER_IMAGE (default: build)")
    args = parser.parse_args()

    docker_client = docker.from_env()
    with (
        (
            temporary_database("sandboxd_bench")
            if args.store == "postgresql"
            else contextlib.nullcontext("")
        ) as database_url,
        tempfile.TemporaryDirectory(prefix="sandboxd-bench-") as data_dir,
    ):
        settings = {
            "log_level": args.log_level,
            "max_inflight_executions": str(max(64, args.chats * 4)),
        }
        if database_url:  # else the embedded SQLite file in the data directory
            settings["database_url"] = database_url
        if args.image:
            settings["docker_image"] = args.image
        service = ServiceProcess(
            Path(data_dir),
            **settings,
        )
        service.instance_id = f"bench-{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [sys.executable, "-m", "entrypoint.cli", "migrate"],
            cwd=ROOT,
            env=service.environment(),
            check=True,
            capture_output=True,
        )
        try:
            service.start()
            results = asyncio.run(run(service, args))
        finally:
            service.stop()
            service.remove_sandboxes(docker_client)
            docker_client.close()

    opened, closed = results["open_loop"], results["closed_loop"]
    report = {
        "benchmark": "http_execute_existing_chats",
        "store": args.store,
        "runtime": "docker",
        "concurrent_chats": args.chats,
        "code": args.code,
        "log_level": args.log_level,
        "serial_p50_ms": results["serial"]["latency_ms"]["p50"],
        "serial_service_cpu_ms_per_execute": results["serial"]["service_cpu_ms_per_execute"],
        "service_cpu_ms_per_execute": closed["service_cpu_ms_per_execute"],
        "p50_ms": opened["latency_ms"]["p50"],
        "p99_ms": opened["latency_ms"]["p99"],
        "executes_per_s": closed["executes_per_s"],
        **results,
        "targets": {"p50_ms": 10, "p99_ms": 40, "executes_per_s": 200},
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
