"""A well-behaved key's executes while another key floods: fairness between tenants.

    uv run python -m bench.bench_tenants [--seconds 10] [--good-chats 4] [--good-rate 10]
        [--flood-chats 8] [--flood-callers 48] [--per-key-cap N] [--fair-share N]

Starts a real ``sandboxd serve`` (PostgreSQL, Docker) with two keys. Phase 1: the good key alone,
one caller per chat sending ``--good-rate`` executes per second (its unloaded p99). A
well-behaved key asks for a modest share of the host; ``--good-rate 0`` makes its callers closed
loops, which saturate a 2-core host alone, so that an equal share under a flood doubles their
latency by itself. Phase 2: the same while the flood key runs ``--flood-callers`` closed-loop
callers over ``--flood-chats`` chats (several per chat, so they also queue behind their chats'
locks), retrying at once on 429, from a process of its own (as another tenant's client would
be). Prints JSON: executes/s and latency of the good key in both phases, the flood key's
executes and 429s, and whether the good key's p99 stayed within 2x of its unloaded p99 (the
target).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
import uuid
from typing import Any

from bench.common import (
    KeepAliveConnection,
    emit,
    running_service,
    sigterm_as_interrupt,
    summary_ms,
)

GOOD = "good-" + uuid.uuid4().hex
FLOOD = "flood-" + uuid.uuid4().hex
BODY = json.dumps({"code": "print(1)"}).encode()


async def _caller(
    port: int,
    key: str,
    chat: uuid.UUID,
    stop_at: float,
    latencies: list[float],
    counts: dict,
    rate: float = 0.0,
) -> None:
    """Closed loop when ``rate`` is 0; else one execute every 1/rate s, each timed from when it
    was due, so that a late send counts as waiting (no coordinated omission)."""
    connection = await KeepAliveConnection.open(port, key)
    due = time.perf_counter()
    try:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            if rate:
                if due > started:
                    await asyncio.sleep(due - started)
                started, due = due, due + 1 / rate
            try:
                status, _ = await connection.post(f"/v1/chats/{chat}/executions", BODY)
            except (ConnectionError, asyncio.IncompleteReadError):
                connection.close()
                connection = await KeepAliveConnection.open(port, key)
                continue
            if status == 200:
                latencies.append(time.perf_counter() - started)
                counts["ok"] = counts.get("ok", 0) + 1
            else:
                counts[str(status)] = counts.get(str(status), 0) + 1
    finally:
        connection.close()


async def _flood_callers(
    port: int, key: str, chats: list[uuid.UUID], callers: int, stop: Any, counts: dict
) -> list[float]:
    """The flood's closed-loop callers, until ``stop`` (a multiprocessing Event) is set."""
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    stop_at = time.monotonic() + 3600
    tasks = [
        asyncio.create_task(_caller(port, key, chats[i % len(chats)], stop_at, latencies, counts))
        for i in range(callers)
    ]
    await loop.run_in_executor(None, stop.wait)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return latencies


def _flood_process(
    port: int,
    key: str,
    chats: list[uuid.UUID],
    callers: int,
    started: Any,
    stop: Any,
    results: Any,
) -> None:
    """The flood in a process of its own: a tenant's flood comes from its own client, and in
    the good callers' event loop its callbacks would delay the good key's measured replies
    (the client's queueing, not the service's)."""
    counts: dict[str, int] = {}
    started.set()
    begun = time.monotonic()
    latencies = asyncio.run(_flood_callers(port, key, chats, callers, stop, counts))
    results.put((len(latencies), time.monotonic() - begun, counts))


async def _phase(
    port: int, seconds: float, good: list, flood: list, callers: int, good_rate: float
) -> dict:
    good_lat: list[float] = []
    good_counts: dict[str, int] = {}
    flooding = None
    if flood:
        context = multiprocessing.get_context("spawn")
        started, stop, results = context.Event(), context.Event(), context.Queue()
        flooding = context.Process(
            target=_flood_process, args=(port, FLOOD, flood, callers, started, stop, results)
        )
        flooding.start()
        await asyncio.get_running_loop().run_in_executor(None, started.wait)
        await asyncio.sleep(0.5)  # the flood's callers are connected and running
    stop_at = time.monotonic() + seconds
    tasks = [_caller(port, GOOD, chat, stop_at, good_lat, good_counts, good_rate) for chat in good]
    began = time.monotonic()
    try:
        await asyncio.gather(*tasks)
    finally:
        elapsed = time.monotonic() - began
        if flooding is not None:
            stop.set()
    flood_report = None
    if flooding is not None:
        flood_ok, flood_elapsed, flood_counts = await asyncio.get_running_loop().run_in_executor(
            None, results.get, True, 60
        )
        flooding.join(10)
        flood_report = {
            "executes_per_s": round(flood_ok / flood_elapsed, 1),
            "responses": flood_counts,
        }
    return {
        "good": {
            "executes_per_s": round(len(good_lat) / elapsed, 1),
            "latency_ms": summary_ms(good_lat),
            "responses": good_counts,
        },
        "flood": flood_report,
    }


async def _warm(port: int, key: str, chats: list[uuid.UUID]) -> None:
    connection = await KeepAliveConnection.open(port, key)
    try:
        for chat in chats:
            for _ in range(3):
                status, payload = await connection.post(f"/v1/chats/{chat}/executions", BODY)
                if status != 200:
                    raise RuntimeError(f"warm-up failed: {status} {payload[:200]!r}")
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--good-chats", type=int, default=4)
    # Executes per second per good chat (0: closed loop).
    parser.add_argument("--good-rate", type=float, default=10.0)
    parser.add_argument("--flood-chats", type=int, default=8)
    parser.add_argument("--flood-callers", type=int, default=48)
    # SANDBOXD_MAX_INFLIGHT_EXECUTIONS_PER_KEY for the run (0: the service's default).
    parser.add_argument("--per-key-cap", type=int, default=0)
    # SANDBOXD_FAIR_SHARE_EXECUTIONS for the run (0: the service's default, the CPUs; a
    # number past the slots turns the fair share off, for a comparison).
    parser.add_argument("--fair-share", type=int, default=0)
    args = parser.parse_args()
    sigterm_as_interrupt()
    good = [uuid.uuid4() for _ in range(args.good_chats)]
    flood = [uuid.uuid4() for _ in range(args.flood_chats)]
    settings = {"api_keys": f"good:{GOOD},flood:{FLOOD}"}
    if args.per_key_cap:
        settings["max_inflight_executions_per_key"] = str(args.per_key_cap)
    if args.fair_share:
        settings["fair_share_executions"] = str(args.fair_share)
    with running_service("tenants", **settings) as service:
        port = service.http_port

        async def run() -> dict[str, Any]:
            await _warm(port, GOOD, good)
            await _warm(port, FLOOD, flood)
            rate = args.good_rate
            alone = await _phase(port, args.seconds, good, [], 0, rate)
            loaded = await _phase(port, args.seconds, good, flood, args.flood_callers, rate)
            return {"alone": alone, "flooded": loaded}

        phases = asyncio.run(run())
    unloaded = phases["alone"]["good"]["latency_ms"].get("p99")
    flooded = phases["flooded"]["good"]["latency_ms"].get("p99")
    ratio = round(flooded / unloaded, 2) if unloaded and flooded else None
    emit(
        {
            "benchmark": "tenants",
            "settings": vars(args),
            "load_average": os.getloadavg(),
            **phases,
            "good_p99_ratio": ratio,
            "target": "good key's p99 under flood <= 2x its unloaded p99",
            "target_met": ratio is not None and ratio <= 2.0,
        }
    )


if __name__ == "__main__":
    main()
