"""grpc's fork handlers are off in the service process: a child forked to exec (as QEMU's is,
under another user) runs none of grpc's code between fork and exec."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# With a grpc.aio server running, fork 50 children the way QEMU is started: a uid given, so
# subprocess forks instead of using vfork, and pthread_atfork handlers run.
CHILDREN = """
import asyncio, os, subprocess
{first_import}
import grpc

async def main():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    def spawn():
        for _ in range(50):
            subprocess.run(["/bin/true"], user=os.getuid(), check=True)
    await asyncio.to_thread(spawn)
    await server.stop(0)
    print(os.environ.get("GRPC_ENABLE_FORK_SUPPORT"))

asyncio.run(main())
"""


def run_children(first_import: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "GRPC_ENABLE_FORK_SUPPORT"}
    env.update({"GRPC_VERBOSITY": "INFO", **env_extra})
    return subprocess.run(
        [sys.executable, "-c", CHILDREN.format(first_import=first_import)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_the_entrypoint_turns_grpc_fork_handlers_off() -> None:
    result = run_children("import entrypoint", {})

    assert result.stdout.strip() == "0"
    assert "fork" not in result.stderr, result.stderr[-2000:]


def test_without_it_grpc_runs_its_fork_handlers_on_every_fork() -> None:
    # The control: the same children without the entrypoint's setting reach grpc's handlers
    # (they log that they skip or run), so the test above can fail.
    result = run_children("", {})

    assert "fork_posix" in result.stderr


def test_an_operator_can_still_turn_them_on() -> None:
    result = run_children("import entrypoint", {"GRPC_ENABLE_FORK_SUPPORT": "1"})

    assert result.stdout.strip() == "1"
