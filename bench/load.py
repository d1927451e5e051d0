"""Load test: N chats x M executes over HTTP, on a ramp of concurrency, against a real service.

    uv run python -m bench.load [--chats 32] [--executes 20] [--levels 1,2,4,8,16,32,64]

Starts a real ``sandboxd serve`` (PostgreSQL store, Docker sandboxes, its own instance id), gives
each of the N chats its sandbox (the first-result latency is reported), then for every
concurrency level C runs N x M executes with C callers in flight at once (closed loop: a caller
sends its next execute as soon as the last returned; callers take chats round-robin, so above N
several executes of one chat queue on its lock, as they would in a real chat).

Every execute bumps a counter kept in its chat's interpreter and prints it. At the end each
chat's returned values must be exactly 1..K with no gap and no repeat: a lost, repeated or
misrouted result is caught even when one chat's executes overlap. Any HTTP error, transport
error or lost result is counted; a run with any makes the exit status 1.

The "bend" is the first level whose p99 is more than twice the lowest level's p99, or whose
throughput grows less than 10 % over the level before: past it, more concurrency only queues.
The load generator is a minimal HTTP/1.1 keep-alive client, since on two cores a heavier client
(httpx costs about a millisecond of CPU per request) would measure itself. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

from bench.common import (
    KeepAliveConnection,
    cpu_seconds,
    emit,
    kept_samples_ms,
    running_service,
    sigterm_as_interrupt,
    summary_ms,
)

COUNTER_CODE = "n = globals().get('n', 0) + 1\nprint(n)"
REQUEST_TIMEOUT_S = 120.0


class HttpError(Exception):
    pass


class Client:
    """Keep-alive connections, one per caller at a time; every result is checked."""

    def __init__(self, port: int, api_key: str) -> None:
        self._port = port
        self._api_key = api_key
        self._idle: list[KeepAliveConnection] = []
        self.values: dict[uuid.UUID, list[int]] = defaultdict(list)
        self.errors: list[str] = []

    async def execute(self, chat: uuid.UUID) -> float | None:
        body = json.dumps({"code": COUNTER_CODE}).encode()
        path = f"/v1/chats/{chat}/executions"
        started = time.perf_counter()
        connection = self._idle.pop() if self._idle else None
        try:
            status, payload = await asyncio.wait_for(
                self._post(connection, path, body), REQUEST_TIMEOUT_S
            )
        except (OSError, asyncio.IncompleteReadError, TimeoutError, HttpError) as exc:
            self.errors.append(f"chat {chat}: {type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - started
        if status != 200:
            self.errors.append(f"chat {chat}: HTTP {status} {payload[:200]!r}")
            return None
        result = json.loads(payload)
        if result.get("exit_code") != 0:
            self.errors.append(f"chat {chat}: exit {result.get('exit_code')} {result!r:.300}")
            return None
        if result.get("sandbox_replaced") or result.get("state_lost"):
            self.errors.append(f"chat {chat}: sandbox replaced, state lost")
        try:
            self.values[chat].append(int(result["stdout"].strip()))
        except (KeyError, ValueError):
            self.errors.append(f"chat {chat}: unexpected stdout {result.get('stdout')!r:.100}")
            return None
        return elapsed

    async def _post(
        self, connection: KeepAliveConnection | None, path: str, body: bytes
    ) -> tuple[int, bytes]:
        if connection is not None:
            try:
                status, payload = await connection.post(path, body)
            except (ConnectionError, asyncio.IncompleteReadError):
                # The server closes keep-alive connections idle for a few seconds. Only a
                # connection that was idle is retried; a request it may have run is not lost,
                # since the counter check below would show a repeat.
                connection.close()
                connection = None
            else:
                self._idle.append(connection)
                return status, payload
        connection = await KeepAliveConnection.open(self._port, self._api_key)
        status, payload = await connection.post(path, body)
        self._idle.append(connection)
        return status, payload

    def lost_results(self) -> list[str]:
        """Chats whose values are not exactly 1..K."""
        problems = []
        for chat, values in self.values.items():
            if sorted(values) != list(range(1, len(values) + 1)):
                problems.append(f"chat {chat}: values {sorted(values)[:20]}...")
        return problems

    def close(self) -> None:
        for connection in self._idle:
            connection.close()


async def run_level(client: Client, chats: list[uuid.UUID], executes: int, concurrency: int):
    jobs = [chat for _ in range(executes) for chat in chats]
    position = 0
    latencies: list[float] = []
    errors_before = len(client.errors)

    async def caller() -> None:
        nonlocal position
        while position < len(jobs):
            chat = jobs[position]
            position += 1
            latency = await client.execute(chat)
            if latency is not None:
                latencies.append(latency)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "executes": len(jobs),
        "ok": len(latencies),
        "errors": len(client.errors) - errors_before,
        "seconds": round(elapsed, 3),
        "executes_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": summary_ms(latencies),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }, latencies


def find_bend(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    usable = [level for level in levels if level["latency_ms"].get("n")]
    if len(usable) < 2:
        return None
    base_p99 = usable[0]["latency_ms"]["p99"]
    for before, level in itertools.pairwise(usable):
        if level["latency_ms"]["p99"] > 2 * base_p99:
            return {"concurrency": level["concurrency"], "reason": "p99 above 2x the lowest"}
        if level["executes_per_s"] < 1.1 * before["executes_per_s"]:
            return {"concurrency": level["concurrency"], "reason": "throughput grew < 10%"}
    return None


async def measure(service: Any, args: argparse.Namespace, api_key: str) -> dict[str, Any]:
    client = Client(service.http_port, api_key)
    chats = [uuid.uuid4() for _ in range(args.chats)]
    pid = service.process.pid
    try:
        # First results: every chat's sandbox is created here, a few at a time.
        firsts: list[float] = []
        gate = asyncio.Semaphore(args.create_concurrency)

        async def first(chat: uuid.UUID) -> None:
            async with gate:
                latency = await client.execute(chat)
            if latency is not None:
                firsts.append(latency)

        started = time.perf_counter()
        await asyncio.gather(*(first(chat) for chat in chats))
        create_s = time.perf_counter() - started
        await run_level(client, chats, 2, min(8, args.chats))  # warm-up, not reported

        levels, samples = [], {}
        for concurrency in args.levels:
            cpu_before = cpu_seconds(pid)
            level, latencies = await run_level(client, chats, args.executes, concurrency)
            level["service_cpu_ms_per_execute"] = round(
                (cpu_seconds(pid) - cpu_before) / max(1, level["ok"]) * 1000, 3
            )
            levels.append(level)
            samples[str(concurrency)] = kept_samples_ms(latencies)
            print(
                f"[load] c={concurrency}: {level['executes_per_s']}/s "
                f"p50 {level['latency_ms'].get('p50')} ms p99 {level['latency_ms'].get('p99')} ms "
                f"errors {level['errors']}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        client.close()
    lost = client.lost_results()
    best = max(levels, key=lambda level: level["executes_per_s"])
    return {
        "benchmark": "http_load_ramp",
        "store": "postgresql",
        "runtime": "docker",
        "chats": args.chats,
        "executes_per_chat_per_level": args.executes,
        "first_result_ms": summary_ms(firsts),
        "create_all_chats_s": round(create_s, 3),
        "create_concurrency": args.create_concurrency,
        "levels": levels,
        "bend": find_bend(levels),
        "peak_executes_per_s": best["executes_per_s"],
        "peak_at_concurrency": best["concurrency"],
        "errors": len(client.errors),
        "lost_results": len(lost),
        "error_samples": client.errors[:10],
        "lost_samples": lost[:10],
        "samples_ms": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=32, help="N")
    parser.add_argument("--executes", type=int, default=20, help="M, per chat and level")
    parser.add_argument(
        "--levels",
        type=lambda text: [int(value) for value in text.split(",")],
        default=[1, 2, 4, 8, 16, 32, 64],
        help="concurrency ramp, comma-separated",
    )
    parser.add_argument("--create-concurrency", type=int, default=4)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    sigterm_as_interrupt()
    from testkit.service import API_KEY

    with running_service(
        "load",
        log_level=args.log_level,
        max_inflight_executions=str(max(64, max(args.levels) * 2)),
        # Every chat needs its own sandbox: the cap derived from this host's memory (24 on a
        # 23 GiB machine) would refuse the last ones (429) and the ramp would measure refusals.
        max_sandboxes=str(args.chats),
    ) as service:
        report = asyncio.run(measure(service, args, API_KEY))
    emit(report)
    return 1 if report["errors"] or report["lost_results"] else 0


if __name__ == "__main__":
    sys.exit(main())
