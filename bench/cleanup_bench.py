"""Cleanup throughput: one sweep over 1,000 expired sessions, PostgreSQL store, Docker runtime.

    uv run python -m bench.cleanup_bench [--sessions 1000] [--started 0] [--running 16] [--serial]
                                        [--engine-stop]

The sweep is the service's own (``container.sweeper().run_once()``, as ``sandboxd cleanup
--once`` runs it: expiry cleanup under each chat's advisory lock, then reconciliation), wired by
the composition root against a throwaway PostgreSQL database and its own instance id. Three
sweeps, each timed on its own:

- ``sessions`` expired records, each with a real container of the sandbox image carrying the
  service's labels, created but not started: a thousand running sandboxes do not fit on two
  cores, and removing a stopped container is the same API call the runtime makes (the figure is
  the store + lock + Docker-removal path, minus killing a process);
- ``running`` expired records of real, running sandboxes made by CreateSandbox (agent and
  python up): the cost per running sandbox;
- ``sessions`` expired records whose containers are already gone: the store + lock + inspect
  path alone.

``--started N`` starts the first N of the ``sessions`` containers (a ``sleep``, not the agent:
a running container to kill and remove, for a few MB each); ``--serial`` wires the sweep without
its executor, one stop after another (the figure before the sweep went parallel), for a
back-to-back comparison.

A running sandbox is ended the sweep's way: its processes are SIGKILLed from the host through its
cgroup (adapter/docker/fast_stop.py), the record is deleted, and the exited container is removed
in the background. ``seconds`` is the sweep (``run_once``); ``all_removed_s`` is until the engine
has no container of this instance left. ``--engine-stop`` makes the engine stop and remove each
one inside the sweep instead (the figure before the host-side kill).

Each sweep must clean exactly what it was given and leave no container of this instance
behind; otherwise the exit status is 1. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import emit, remove_containers_of, sigterm_as_interrupt


def build_container(database_url: str, data_dir: Path, instance_id: str, serial: bool) -> Any:
    from dependency_injector import providers

    from entrypoint.container import Container
    from entrypoint.settings import Settings

    settings = Settings(
        database_url=database_url,
        data_dir=data_dir,
        instance_id=instance_id,
        runtime="docker",
        log_level="warning",
        lock_max_connections=64,
    )
    container = Container()
    container.settings.override(providers.Object(settings))
    if serial:
        container.sweep_executor.override(providers.Object(None))
    return container


def expired_session(container_id: str, now: Any) -> Any:
    from domain.sandbox import SandboxSession, SandboxStatus

    return SandboxSession(
        session_id=uuid.uuid4(),
        chat_id=uuid.uuid4(),
        container_id=container_id,
        status=SandboxStatus.RUNNING,
        created_at=now - timedelta(hours=1),
        expires_at=now - timedelta(minutes=1),
        runtime_kind="docker",
    )


def create_containers(image: str, instance_id: str, count: int, started: int) -> list[str]:
    import docker

    from adapter.docker.runtime import LABEL_CHAT, LABEL_INSTANCE, LABEL_SESSION

    client = docker.APIClient(version="auto", timeout=120)
    host_config = client.create_host_config(network_mode="none")

    def one(index: int) -> str:
        created = client.create_container(
            image,
            command=["sleep", "3600"] if index < started else ["python3", "-c", "pass"],
            labels={
                LABEL_SESSION: str(uuid.uuid4()),
                LABEL_CHAT: str(uuid.uuid4()),
                LABEL_INSTANCE: instance_id,
            },
            host_config=host_config,
        )
        if index < started:
            client.start(created["Id"])
        return str(created["Id"])

    try:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(one, range(count)))
    finally:
        client.close()


def engine_containers(instance_id: str) -> int:
    """How many containers of this instance the engine still has (background removals too)."""
    import docker

    from adapter.docker.runtime import LABEL_INSTANCE

    client = docker.APIClient(version="auto", timeout=120)
    try:
        return len(
            client.containers(all=True, filters={"label": f"{LABEL_INSTANCE}={instance_id}"})
        )
    finally:
        client.close()


def wait_until_removed(instance_id: str, limit_s: float = 600.0) -> bool:
    deadline = time.perf_counter() + limit_s
    while engine_containers(instance_id):
        if time.perf_counter() > deadline:
            return False
        time.sleep(0.1)
    return True


def timed_sweep(container: Any, expected: int, kind: str, instance_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    report = container.sweeper().run_once()
    elapsed = time.perf_counter() - started
    # Killed sandboxes' containers are removed in the background after the sweep returns.
    removed = wait_until_removed(instance_id)
    removed_s = time.perf_counter() - started
    problems = []
    if not report.leader:
        problems.append("the sweep did not lead")
    if len(report.cleaned) != expected:
        problems.append(f"cleaned {len(report.cleaned)} of {expected}")
    left = container.runtime().list_managed()
    if left:
        problems.append(f"{len(left)} containers of this instance left behind")
    if not removed:
        problems.append("the background removals did not finish")
    return {
        "kind": kind,
        "sessions": expected,
        "cleaned": len(report.cleaned),
        "orphans_removed": len(report.orphans_removed),
        "marked_dead": len(report.marked_dead),
        "seconds": round(elapsed, 3),
        "all_removed_s": round(removed_s, 3),
        "sessions_per_s": round(len(report.cleaned) / elapsed, 1) if elapsed else None,
        "ms_per_session": round(elapsed / max(1, expected) * 1000, 3),
        "problems": problems,
    }


def measure(args: argparse.Namespace, database_url: str, data_dir: Path) -> dict[str, Any]:
    from adapter.docker.image import default_image_tag
    from repository.database import migrate
    from usecase.sandbox import CreateSandboxCommand

    instance_id = f"bench-cleanup-{uuid.uuid4().hex[:10]}"
    container = build_container(database_url, data_dir, instance_id, args.serial)
    try:
        migrate(container.database_engine())
        repository = container.repository()
        clock = container.clock()
        docker_settings = container.settings().docker
        image = docker_settings.image or default_image_tag(docker_settings.image_repository)
        sweeps = []

        started = time.perf_counter()
        ids = create_containers(image, instance_id, args.sessions, args.started)
        setup_s = time.perf_counter() - started
        for container_id in ids:
            repository.save(expired_session(container_id, clock.now()))
        sweeps.append(timed_sweep(container, len(ids), "containers", instance_id))
        sweeps[-1]["started_containers"] = min(args.started, len(ids))
        sweeps[-1]["container_setup_s"] = round(setup_s, 1)

        create = container.create_sandbox()
        for _ in range(args.running):
            session = create.execute(CreateSandboxCommand(uuid.uuid4()))
            repository.save(replace(session, expires_at=clock.now() - timedelta(seconds=1)))
        sweeps.append(timed_sweep(container, args.running, "running_sandboxes", instance_id))

        for index in range(args.sessions):
            repository.save(expired_session(f"gone-{index}", clock.now()))
        sweeps.append(timed_sweep(container, args.sessions, "records_only", instance_id))
    finally:
        remove_containers_of(instance_id)
        container.shutdown_resources()
        for name in ("database_engine", "lock_engine"):
            try:
                getattr(container, name)().dispose()
            except Exception as exc:  # best effort at teardown
                print(f"[cleanup] dispose {name}: {exc}", file=sys.stderr)
        container.runtime().close()
    main_sweep = sweeps[0]
    return {
        "benchmark": "cleanup_sweep",
        "store": "postgresql",
        "runtime": "docker",
        "sessions": args.sessions,
        "started": min(args.started, args.sessions),
        "parallel": not args.serial,
        "sessions_per_s": main_sweep["sessions_per_s"],
        "sweep_s": main_sweep["seconds"],
        "all_removed_s": main_sweep["all_removed_s"],
        "fast_kill": not args.engine_stop,
        "running_sandbox_ms_each": sweeps[1]["ms_per_session"],
        "records_only_sessions_per_s": sweeps[2]["sessions_per_s"],
        "sweeps": sweeps,
        "errors": sum(len(sweep["problems"]) for sweep in sweeps),
        "targets": {"sweep_s": 10},
    }


def never_kill(killer: Any, container: Any) -> bool:
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--running", type=int, default=16)
    parser.add_argument("--started", type=int, default=0, help="of --sessions, started")
    parser.add_argument("--serial", action="store_true", help="sweep without its executor")
    parser.add_argument(
        "--engine-stop",
        action="store_true",
        help="stop through the engine, not the host-side kill (the figure before it)",
    )
    args = parser.parse_args()
    sigterm_as_interrupt()
    if args.engine_stop:
        from adapter.docker import fast_stop

        # Every container then takes the runtime's fallback: the engine stops and removes it.
        fast_stop.HostKiller.kill_by_id = never_kill  # type: ignore[method-assign,assignment]
        fast_stop.HostKiller.kill_inspected = never_kill  # type: ignore[method-assign,assignment]
    from adapter.logging import configure_logging
    from testkit.pg import temporary_database

    configure_logging("warning", "json")
    with (
        temporary_database("sandboxd_cleanup") as database_url,
        tempfile.TemporaryDirectory(prefix="sandboxd-cleanup-") as data_dir,
    ):
        report = measure(args, database_url, Path(data_dir))
    emit(report)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
