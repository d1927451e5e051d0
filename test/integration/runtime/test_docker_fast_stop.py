"""The sweep's fast stop: SIGKILL a container's processes through its cgroup, remove it later."""

from __future__ import annotations

import contextlib
import os
import subprocess
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
from adapter.docker.containers import LABEL_INSTANCE
from adapter.docker.fast_stop import CgroupLayout, HostKiller, cgroup_of, kill_container_processes
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


def _settled_tree(info: dict[str, Any]) -> list[int]:
    """The container's live pids once FORK_TREE is all up: its five sleeps exist (the forks and
    the ``setsid`` wrapper that exits, left a zombie, are transient before that)."""

    def sleeps() -> list[str]:
        found = []
        for pid in _host_pids(info):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[0] == b"sleep":
                    found.append(argv[1].decode())
        return sorted(found)

    _wait_until(lambda: sleeps() == ["1000", "1000", "1001", "1001", "1002"], "the fork tree up")
    return [pid for pid in _host_pids(info) if _alive(pid)]


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
        # Still running when the victim is killed, then finishes normally (seconds under load).
        code = FORK_TREE + "import time\ntime.sleep(15)\nprint('done')\n"
        running = pool.submit(bystander.run, code, timeout_s=60)
        bystander_info = _inspect(bystander.id)
        assert bystander_info is not None
        bystander_pids = _settled_tree(bystander_info)

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
    monkeypatch.setattr(runtime, "_host_killer", HostKiller(root=tmp_path))

    runtime.kill(sandbox.id)

    assert _inspect(sandbox.id) is None


def test_once_learned_the_cgroup_comes_from_the_id_and_only_that_container_is_killed(
    runtime: DockerSandboxRuntime,
) -> None:
    """No inspect after the first kill: the cgroup is derived from the id, and it is that
    container's fork tree that dies, not a bystander's."""
    teacher, victim, bystander = (create_sandbox(runtime) for _ in range(3))
    pool = ThreadPoolExecutor(2)
    killer = HostKiller()
    try:
        assert killer.kill_by_id(victim.id) is False, "nothing is derived before a layout is known"
        teacher_info = _inspect(teacher.id)
        assert teacher_info is not None
        assert killer.kill_inspected(teacher_info) is True

        victim_run = pool.submit(victim.run, RUNNING_FORK_TREE, timeout_s=300)
        bystander_run = pool.submit(bystander.run, RUNNING_FORK_TREE, timeout_s=300)
        infos = [_inspect(victim.id), _inspect(bystander.id)]
        assert infos[0] is not None and infos[1] is not None
        victim_pids, bystander_pids = _settled_tree(infos[0]), _settled_tree(infos[1])

        assert killer.kill_by_id(victim.id) is True

        _wait_until(lambda: not any(_alive(p) for p in victim_pids), f"survivors of {victim_pids}")
        with pytest.raises(SandboxGoneError):
            victim_run.result()
        assert all(_alive(pid) for pid in bystander_pids)
        assert not bystander_run.done()
        # Exited: its cgroup is gone, so there is nothing to derive (the caller inspects).
        _wait_until(lambda: killer.kill_by_id(victim.id) is False, "the victim's cgroup removed")
    finally:
        # The engine first: the runtime's stop would wait for a still-running execution.
        for sandbox in (victim, bystander):
            docker.APIClient(version="auto").remove_container(sandbox.id, force=True)
        for sandbox in (teacher, victim, bystander):
            runtime.stop(sandbox.id)
        pool.shutdown()


def test_a_derived_cgroup_needs_a_full_container_id(tmp_path: Path) -> None:
    layout = CgroupLayout.learn("v1", tmp_path / "docker" / ("a" * 64), "a" * 64)
    assert layout is not None
    (tmp_path / "docker" / ("b" * 64)).mkdir(parents=True)
    (tmp_path / "docker" / ("b" * 64) / "freezer.state").write_text("THAWED")
    assert layout.directory_of("b" * 64) == tmp_path / "docker" / ("b" * 64)
    for refused in ("b" * 12, "../" + "b" * 61, "B" * 64, "c" * 64):
        assert layout.directory_of(refused) is None
    # The id must be the cgroup's own name, once.
    assert CgroupLayout.learn("v1", tmp_path / ("a" * 64) / "sub", "a" * 64) is None
    assert CgroupLayout.learn("v1", tmp_path / "x", "a" * 64) is None


def test_a_pid_listed_in_a_cgroup_it_is_not_in_is_not_signalled(tmp_path: Path) -> None:
    """The freezer lists a process whose own /proc/<pid>/cgroup says otherwise: left alone."""
    container_id = "d" * 64
    freezer = tmp_path / "freezer" / "docker" / container_id
    freezer.mkdir(parents=True)
    (freezer / "freezer.state").write_text("THAWED")
    outsider = subprocess.Popen(["sleep", "60"])
    try:
        (freezer / "cgroup.procs").write_text(f"{outsider.pid}\n")
        killer = HostKiller(root=tmp_path)
        killer._layout = CgroupLayout.learn("v1", freezer, container_id)

        assert killer.kill_by_id(container_id) is True  # nothing of the container was left

        assert outsider.poll() is None
        assert (freezer / "freezer.state").read_text() == "THAWED"
    finally:
        outsider.kill()
        outsider.wait()


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
