"""What grpc.aio itself costs per unary call: the floor under the service's gRPC CPU figure.

    uv run python -m bench.grpc_floor [--calls 2000]

Starts a bare grpc.aio server on uvloop (as ``sandboxd serve`` runs it) in a process of its
own, whose SandboxService.Execute answers at once with a canned response of the service's shape
(a result and a sandbox with its four timestamps): no API key, no use case, no database, no
sandbox. One caller alone, then 16 callers back to back, over the same kind of channel the
benchmarks use; the server's CPU (utime + stime) per call is what the transport costs before the
service does anything. Prints JSON; bench.grpc_bench reports it next to the service's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.common import cpu_seconds
from testkit.service import free_port

_CALLERS = 16


def _canned() -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    from entrypoint.grpc.generated import sandboxd_pb2 as pb

    now = Timestamp(seconds=int(time.time()))
    return pb.ExecuteResponse(
        result=pb.ExecutionResult(stdout="1\n", exit_code=0, duration_s=0.0003),
        sandbox=pb.Sandbox(
            chat_id="6f1c1d5e-9a43-4d6a-8d0e-3c4b5a697887",
            session_id="0b8f0f4e-8a3c-4a43-9c37-0e0f5b6f6d21",
            container_id="c" * 64,
            status="running",
            runtime_kind="docker",
            created_at=now,
            expires_at=now,
            last_activity_at=now,
            max_expires_at=now,
        ),
    )


def serve(port: int) -> None:
    import grpc
    import uvloop

    from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc

    response = _canned()

    class Canned(pb_grpc.SandboxServiceServicer):
        async def Execute(self, request: Any, context: Any) -> Any:  # noqa: N802
            return response

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_SandboxServiceServicer_to_server(Canned(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(run())


async def _measure(port: int, pid: int, calls: int) -> dict[str, Any]:
    import grpc

    from entrypoint.grpc.generated import sandboxd_pb2 as pb
    from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.SandboxServiceStub(channel)
    request = pb.ExecuteRequest(chat_id="6f1c1d5e-9a43-4d6a-8d0e-3c4b5a697887", code="print(1)")
    await channel.channel_ready()

    async def caller(count: int) -> None:
        for _ in range(count):
            await stub.Execute(request, timeout=30)

    await caller(200)  # warm-up
    figures: dict[str, Any] = {}
    for name, callers in (("serial", 1), ("closed_loop", _CALLERS)):
        each = max(1, calls // callers)
        before, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(caller(each) for _ in range(callers)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - before
        figures[name] = {
            "callers": callers,
            "calls_per_s": round(callers * each / elapsed, 1),
            "server_cpu_ms_per_call": round(cpu / (callers * each) * 1000, 3),
        }
    await channel.close()
    return figures


def transport_floor(calls: int = 2000) -> dict[str, Any]:
    """The bare server's CPU per call, serial and with 16 callers (see the module doc)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_floor", "--serve", str(port)],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        return asyncio.run(_measure(port, server.pid, calls))
    finally:
        server.kill()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    floor = transport_floor(args.calls)
    print(json.dumps({"benchmark": "grpc_transport_floor", **floor, "load": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
