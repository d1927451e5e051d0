"""gRPC Execute latency and throughput on existing chats, PostgreSQL store, Docker sandboxes.

    uv run python -m bench.grpc_bench [--chats 16] [--serial 300] [--seconds 10]

Starts a real ``sandboxd serve`` (own instance id, data directory and throwaway PostgreSQL
database), gives every chat its sandbox and warms up, then:

- serial: one caller, one chat, one Execute after another: the latency of the whole stack with
  nothing queued (the figure to compare with the runtime's own round trip);
- open loop (the latency figures, as bench_http.py measures HTTP): Executes arrive at ``--rate``
  per second spread round-robin over the chats, whether or not earlier ones returned; latency runs
  from each one's scheduled send time, so a stall is not hidden by sending less;
- closed loop (the capacity figure): one caller per chat, each sending its next Execute when the
  last returned: executes per second.

Then ``transport_floor`` (bench/grpc_floor.py): the CPU a bare grpc.aio server spends per call
answering at once, serial and with 16 callers: the part of the service's figure that is gRPC's.

Every result is checked (exit code 0, the chat's own counter), so a lost or misrouted result is
an error; any error makes the exit status 1. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

from bench.common import (
    cpu_seconds,
    emit,
    kept_samples_ms,
    running_service,
    sigterm_as_interrupt,
    summary_ms,
    thread_usage,
    thread_usage_per_execute,
)
from bench.grpc_floor import transport_floor

# Each execute bumps a per-chat counter kept in the sandbox's interpreter and prints it, so the
# caller knows which value must come back: a lost, repeated or misrouted execution shows.
COUNTER_CODE = "n = globals().get('n', 0) + 1\nprint(n)"


class Caller:
    def __init__(self, target: str, api_key: str) -> None:
        import grpc

        from entrypoint.grpc.generated import sandboxd_pb2, sandboxd_pb2_grpc

        self._pb2 = sandboxd_pb2
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = sandboxd_pb2_grpc.SandboxServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.counters: dict[uuid.UUID, int] = {}
        self.errors: list[str] = []

    async def execute(self, chat: uuid.UUID) -> float | None:
        """One checked Execute; returns its latency, or None (and records why) on failure."""
        import grpc

        expected = self.counters.get(chat, 0) + 1
        request = self._pb2.ExecuteRequest(chat_id=str(chat), code=COUNTER_CODE)
        started = time.perf_counter()
        try:
            response = await self._stub.Execute(request, metadata=self._metadata, timeout=60)
        except grpc.aio.AioRpcError as exc:
            self.errors.append(f"{exc.code().name}: {exc.details()}")
            return None
        elapsed = time.perf_counter() - started
        result = response.result
        if result.exit_code != 0 or result.stdout != f"{expected}\n":
            self.errors.append(
                f"chat {chat}: expected {expected}, got exit {result.exit_code} "
                f"stdout {result.stdout[:80]!r} stderr {result.stderr[:200]!r}"
            )
            # Resynchronise so that one bad result is counted once, not for every later one.
            try:
                self.counters[chat] = int(result.stdout.strip())
            except ValueError:
                self.counters[chat] = expected
            return None
        self.counters[chat] = expected
        return elapsed

    async def close(self) -> None:
        await self._channel.close()


async def measure(service: Any, args: argparse.Namespace) -> dict[str, Any]:
    caller = Caller(service.grpc_target, _api_key())
    chats = [uuid.uuid4() for _ in range(args.chats)]
    pid = service.process.pid
    try:
        started = time.perf_counter()
        firsts = await asyncio.gather(*(caller.execute(chat) for chat in chats))
        create_s = time.perf_counter() - started
        for _ in range(args.warmup):
            await asyncio.gather(*(caller.execute(chat) for chat in chats))

        serial: list[float] = []
        cpu_before = cpu_seconds(pid)
        for _ in range(args.serial):
            latency = await caller.execute(chats[0])
            if latency is not None:
                serial.append(latency)
        serial_cpu = cpu_seconds(pid) - cpu_before

        opened: list[float] = []
        in_flight: set[uuid.UUID] = set()
        total = int(args.rate * args.seconds)
        tasks = []

        async def one(chat: uuid.UUID, scheduled: float) -> None:
            # One chat's executes must not overlap here, or the counter check would misfire;
            # at the default rate a chat's previous execute is long done anyway.
            while chat in in_flight:
                await asyncio.sleep(0.0005)
            in_flight.add(chat)
            try:
                if await caller.execute(chat) is not None:
                    opened.append(time.perf_counter() - scheduled)
            finally:
                in_flight.discard(chat)

        open_started = time.perf_counter()
        for index in range(total):
            scheduled = open_started + index / args.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(chats[index % len(chats)], scheduled)))
        await asyncio.gather(*tasks)
        open_elapsed = time.perf_counter() - open_started

        concurrent: list[float] = []
        deadline = time.perf_counter() + args.seconds

        async def loop(chat: uuid.UUID) -> None:
            while time.perf_counter() < deadline:
                latency = await caller.execute(chat)
                if latency is not None:
                    concurrent.append(latency)

        cpu_before, threads_before = cpu_seconds(pid), thread_usage(pid)
        started = time.perf_counter()
        await asyncio.gather(*(loop(chat) for chat in chats))
        elapsed = time.perf_counter() - started
        service_cpu = cpu_seconds(pid) - cpu_before
        threads = thread_usage_per_execute(threads_before, thread_usage(pid), len(concurrent))
    finally:
        await caller.close()
    return {
        "benchmark": "grpc_execute_existing_chats",
        "store": args.store,
        "runtime": "docker",
        "concurrent_chats": args.chats,
        "sandboxes_created": sum(1 for value in firsts if value is not None),
        "create_all_chats_s": round(create_s, 3),
        "serial_ms": summary_ms(serial),
        "serial_service_cpu_ms_per_execute": round(serial_cpu / max(1, len(serial)) * 1000, 3),
        "open_loop": {
            "offered_per_s": args.rate,
            "achieved_per_s": round(len(opened) / open_elapsed, 1),
            "latency_ms": summary_ms(opened),
        },
        "closed_loop_ms": summary_ms(concurrent),
        "p50_ms": summary_ms(opened).get("p50"),
        "p99_ms": summary_ms(opened).get("p99"),
        "executes_per_s": round(len(concurrent) / elapsed, 1),
        "service_cpu_ms_per_execute": round(service_cpu / max(1, len(concurrent)) * 1000, 3),
        "closed_loop_threads_per_execute": threads,
        "errors": len(caller.errors),
        "error_samples": caller.errors[:10],
        "targets": {"p50_ms": 10, "p99_ms": 40, "executes_per_s": 200},
        "samples_ms": {
            "serial": kept_samples_ms(serial),
            "open_loop": kept_samples_ms(opened),
            "closed_loop": kept_samples_ms(concurrent),
        },
    }


def _api_key() -> str:
    from testkit.service import API_KEY

    return API_KEY


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=16)
    parser.add_argument("--serial", type=int, default=300, help="executes, one at a time")
    parser.add_argument("--rate", type=float, default=200.0, help="open loop: executes/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--warmup", type=int, default=5, help="rounds over all chats")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args()
    sigterm_as_interrupt()
    with running_service(
        "grpc",
        store=args.store,
        log_level=args.log_level,
        max_inflight_executions=str(max(64, args.chats * 4)),
    ) as service:
        report = asyncio.run(measure(service, args))
    # After the service has stopped, so that the two do not share the cores.
    report["transport_floor"] = transport_floor()
    emit(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
