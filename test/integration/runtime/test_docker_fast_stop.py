"""The sweep's fast stop: SIGKILL a container's processes through its cgroup, remove it later."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import docker
import pytest

from adapter.clock import SystemClock
from adapter.docker import fast_stop
from adapter.docker.containers import LABEL_INSTANCE
from adapter.docker.fast_stop import cgroup_of, kill_container_processes
from adapter.docker.runtime import DockerSandboxRuntime
from domain.errors import SandboxGoneError
from domain.execution import ExecutionRequest
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.fakes import FakeLogger
from testkit.runtime import create_sandbox, docker_runsc_runtime, docker_runtime
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.ports import SandboxKiller
from usecase.reconcile import ReconcileSandboxes
from usecase.sandbox import CleanupExpiredSandboxes

pytestmark = pytest.mark.docker

# User code that leaves a fork tree behind: two forked children (one forks again) and a
# `sleep` in its own session, none of them waited for.
FORK_TREE = (
    "import os, subprocess\n"
    "for _ in range(2):\n"
    "    if os.fork() == 0:\n"
    "        if os.fork() == 0:\n"
    "            os.execvp('sleep', ['sleep', '1000'])\n"
    "        os.execvp('sleep', ['sleep', '1001'])\n"
    "subprocess.Popen(['setsid', 'sleep', '1002'], start_new_session=True)\n"
    "print('ok', flush=True)\n"
)
# ...still running when the sandbox is killed (the agent ends an execution's leftovers itself).
RUNNING_FORK_TREE = FORK_TREE + "import time\ntime.sleep(1000)\n"


@pytest.fixture(scope="module")
def runtime() -> Iterator[DockerSandboxRuntime]:
    with docker_runtime() as made:
        yield made


def _inspect(container_id: str) -> dict[str, Any] | None:
    try:
        return docker.APIClient(version="auto").inspect_container(container_id)
    except docker.errors.NotFound:
        return None


def _host_pids(info: dict[str, Any]) -> list[int]:
    found = cgroup_of(info["State"]["Pid"], info["Id"])
    assert found is not None, "the container's cgroup must be found on this machine"
    return [int(pid) for pid in (found[1] / "cgroup.procs").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _wait_until(condition: Callable[[], object], what: str, limit_s: float = 300.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_fast_kill_kills_every_process_including_a_fork_tree(
    runtime: DockerSandboxRuntime,
) -> None:
    sandbox = create_sandbox(runtime)
    pool = ThreadPoolExecutor(1)
    try:
        running = pool.submit(sandbox.run, RUNNING_FORK_TREE, timeout_s=300)
        info = _inspect(sandbox.id)
        assert info is not None
        # The agent, the execution's python, its two children and grandchildren, the setsid sleep.
        _wait_until(lambda: len(_host_pids(info)) >= 7, "the fork tree up")
        pids = _host_pids(info)

        assert kill_container_processes(info) is True

        _wait_until(lambda: not any(_alive(pid) for pid in pids), f"survivors of {pids}", 30)
        with pytest.raises(SandboxGoneError):
            running.result()
        _wait_until(
            lambda: not (_inspect(sandbox.id) or {}).get("State", {}).get("Running"), "exit"
        )
    finally:
        # The engine first: the runtime's stop would wait for a still-running execution.
        docker.APIClient(version="auto").remove_container(sandbox.id, force=True)
        runtime.stop(sandbox.id)
        pool.shutdown()


def test_fast_kill_touches_no_other_container(runtime: DockerSandboxRuntime) -> None:
    victim, bystander = create_sandbox(runtime), create_sandbox(runtime)
    pool = ThreadPoolExecutor(1)
    try:
        # Still running when the victim is killed, then finishes normally.
        code = FORK_TREE + "import time\ntime.sleep(3)\nprint('done')\n"
        running = pool.submit(bystander.run, code, timeout_s=60)
        bystander_info = _inspect(bystander.id)
        assert bystander_info is not None
        _wait_until(lambda: len(_host_pids(bystander_info)) >= 7, "the fork tree up")
        bystander_pids = _host_pids(bystander_info)

        runtime.kill(victim.id)

        assert all(_alive(pid) for pid in bystander_pids)
        assert running.result().stdout.split() == ["ok", "done"]
        _wait_until(lambda: _inspect(victim.id) is None, "background removal of the victim")
    finally:
        runtime.stop(bystander.id)
        pool.shutdown()
        runtime.stop(victim.id)


def test_a_pid_outside_the_container_is_not_its_cgroup(runtime: DockerSandboxRuntime) -> None:
    """A pid reused since the inspect lies in another cgroup: nothing is signalled."""
    sandbox = create_sandbox(runtime)
    try:
        info = _inspect(sandbox.id)
        assert info is not None
        stale = {**info, "State": {**info["State"], "Pid": os.getpid()}}
        assert kill_container_processes(stale) is False
        assert sandbox.run("print(1)").stdout.strip() == "1"
    finally:
        runtime.stop(sandbox.id)


def test_fallback_when_the_cgroup_is_not_found(
    runtime: DockerSandboxRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown cgroup layout: the engine stops and removes the container before kill returns."""
    sandbox = create_sandbox(runtime)
    info = _inspect(sandbox.id)
    assert info is not None
    assert kill_container_processes(info, root=tmp_path) is False
    monkeypatch.setattr(
        fast_stop,
        "kill_container_processes",
        lambda info: kill_container_processes(info, root=tmp_path),
    )

    runtime.kill(sandbox.id)

    assert _inspect(sandbox.id) is None


@pytest.mark.gvisor
def test_runsc_falls_back_to_the_engine() -> None:
    """gVisor's sandbox runs outside what the engine reports as the container's pid."""
    with docker_runsc_runtime() as runsc:
        sandbox = create_sandbox(runsc)
        info = _inspect(sandbox.id)
        assert info is not None
        assert kill_container_processes(info) is False
        runsc.kill(sandbox.id)
        assert _inspect(sandbox.id) is None


def test_sweep_then_reconcile_leaves_no_container_and_the_chat_gets_a_new_sandbox(
    runtime: DockerSandboxRuntime,
) -> None:
    assert isinstance(runtime, SandboxKiller)
    repository = InMemorySandboxSessionRepository()
    locker = ProcessLocalSandboxLifecycleLocker()
    logger = FakeLogger()
    clock = SystemClock()
    execute = ExecuteCode(repository, locker, runtime, clock, logger, timedelta(minutes=5))
    chats = [uuid4() for _ in range(3)]
    first = {
        chat: execute.execute(ExecuteCodeCommand(chat, ExecutionRequest(FORK_TREE))).session
        for chat in chats
    }
    for session in first.values():
        repository.save(replace(session, expires_at=clock.now() - timedelta(seconds=1)))
    instance = runtime._config.instance_id

    cleaned = CleanupExpiredSandboxes(repository, locker, runtime, clock, logger).execute()
    ReconcileSandboxes(repository, locker, runtime, logger).execute()

    assert sorted(s.session_id for s in cleaned) == sorted(s.session_id for s in first.values())
    client = docker.APIClient(version="auto")
    _wait_until(
        lambda: not client.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}),
        "every container of this instance removed",
    )
    again = execute.execute(ExecuteCodeCommand(chats[0], ExecutionRequest("print(3)")))
    assert again.result.stdout.strip() == "3"
    assert again.session.container_id != first[chats[0]].container_id
    runtime.stop(again.session.container_id)
