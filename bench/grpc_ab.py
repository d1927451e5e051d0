"""Two services side by side under the same gRPC load, settings A against settings B.

    uv run python -m bench.grpc_ab --a log_level=info --b log_level=warning [--seconds 12]

On a shared VM the service's CPU per execute moves by 20-30% from one run to the next with the
same code (other tenants' load: steal time, cold caches), more than most changes it is asked to
judge. Here both services run at once, each with its own chats and callers (``--chats`` each,
sent by one client), so the noise of the moment falls on both alike, and the figure is the ratio
``b_over_a`` of their CPU per execute. Repeat it a few times: the spread of the ratios says what
difference is real. Settings are the service's (``name=value`` as in SANDBOXD_NAME).

Prints one JSON object; exit status 1 when an execute failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from contextlib import ExitStack
from typing import Any

from bench.common import (
    cpu_seconds,
    emit,
    running_service,
    sigterm_as_interrupt,
    thread_usage,
    thread_usage_per_execute,
)
from bench.grpc_bench import Caller, _api_key


async def measure(services: list[Any], chats_each: int, seconds: float) -> dict[str, Any]:
    callers = [Caller(service.grpc_target, _api_key()) for service in services]
    chats = [[uuid.uuid4() for _ in range(chats_each)] for _ in services]
    pairs = [(caller, chat) for caller, own in zip(callers, chats, strict=True) for chat in own]
    try:
        for _ in range(6):  # every sandbox started and warm
            await asyncio.gather(*(caller.execute(chat) for caller, chat in pairs))
        pids = [service.process.pid for service in services]
        cpu_before = [cpu_seconds(pid) for pid in pids]
        threads_before = [thread_usage(pid) for pid in pids]
        done = [0] * len(services)
        deadline = time.perf_counter() + seconds

        async def loop(index: int, chat: uuid.UUID) -> None:
            while time.perf_counter() < deadline:
                if await callers[index].execute(chat) is not None:
                    done[index] += 1

        await asyncio.gather(
            *(loop(index, chat) for index, own in enumerate(chats) for chat in own)
        )
        sides: dict[str, dict[str, Any]] = {}
        for index, name in enumerate("ab"):
            cpu = cpu_seconds(pids[index]) - cpu_before[index]
            sides[name] = {
                "executes": done[index],
                "service_cpu_ms_per_execute": round(cpu / max(1, done[index]) * 1000, 3),
                "threads_per_execute": thread_usage_per_execute(
                    threads_before[index], thread_usage(pids[index]), done[index]
                ),
                "errors": len(callers[index].errors),
                "error_samples": callers[index].errors[:5],
            }
    finally:
        for caller in callers:
            await caller.close()
    a, b = sides["a"]["service_cpu_ms_per_execute"], sides["b"]["service_cpu_ms_per_execute"]
    return {"b_over_a": round(b / a, 3) if a else None, **sides}


def _settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator:
            raise SystemExit(f"a setting is name=value, not {pair!r}")
        settings[name.lower()] = value
    return settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--b", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--chats", type=int, default=8, help="per service")
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    sigterm_as_interrupt()
    sides = (_settings(args.a), _settings(args.b))
    with ExitStack() as stack:
        services = [stack.enter_context(running_service("grpc-ab", **side)) for side in sides]
        report = asyncio.run(measure(services, args.chats, args.seconds))
    emit({"benchmark": "grpc_ab", "settings_a": sides[0], "settings_b": sides[1], **report})
    return 1 if report["a"]["errors"] or report["b"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
