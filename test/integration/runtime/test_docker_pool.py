"""Warm pools on the real Docker runtime: claim, rebinding through the session record, the
health check of a SIGSTOPped member, and reconciliation."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import timedelta

import pytest

from adapter.clock import SystemClock
from adapter.docker.runtime import DockerSandboxRuntime
from domain.execution import ExecutionRequest
from domain.pool import PoolCapacity, PoolDefinition
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.fakes import FakeLogger
from testkit.runtime import docker_runtime
from testkit.world import CHAT
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.pool import WarmPool, WarmPools
from usecase.reconcile import ReconcileSandboxes

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def runtime() -> Iterator[DockerSandboxRuntime]:
    with docker_runtime() as made:
        yield made


def test_a_claimed_member_serves_the_chat_and_survives_reconciliation(
    runtime: DockerSandboxRuntime,
) -> None:
    repository = InMemorySandboxSessionRepository()
    locker = ProcessLocalSandboxLifecycleLocker()
    logger = FakeLogger()
    pools = WarmPools(runtime, repository, SystemClock(), logger, runtime)
    pools.apply([PoolDefinition("base", "python", (), PoolCapacity.fixed(1))])
    pool = pools.get("base")
    assert pool is not None
    pool.fill()
    (member,) = [item for item in runtime.list_managed()]
    try:
        execution = ExecuteCode(
            repository, locker, runtime, SystemClock(), logger, timedelta(minutes=5), warm=pools
        ).execute(ExecuteCodeCommand(CHAT, ExecutionRequest(code="print(6 * 7)")))
        assert execution.result.stdout.strip() == "42"
        assert execution.session.container_id == member.container_id
        assert execution.session.session_id == member.session_id
        assert repository.get_active_by_chat_id(CHAT) == execution.session
        pool.fill()

        report = ReconcileSandboxes(repository, locker, runtime, logger, pools).execute()

        assert report.removed_orphans == []
        assert runtime.is_alive(member.container_id)
        assert len(runtime.list_managed()) == 2  # the claimed one and its replacement
    finally:
        pools.close(wait_s=30)
        for item in runtime.list_managed():
            runtime.stop(item.container_id)


def test_a_sigstopped_member_fails_the_health_check_and_is_replaced(
    runtime: DockerSandboxRuntime,
) -> None:
    logger = FakeLogger()
    pool = WarmPool(
        PoolDefinition("base", "python", (), PoolCapacity.fixed(1)),
        runtime,
        InMemorySandboxSessionRepository(),
        SystemClock(),
        logger,
        health=runtime,
        health_timeout_s=0.5,
    )
    pool.fill()
    (frozen,) = runtime.list_managed()
    try:
        assert pool.check_health() == 0  # a live agent answers
        subprocess.run(
            ["docker", "kill", "--signal=SIGSTOP", frozen.container_id],
            check=True,
            capture_output=True,
        )
        assert runtime.is_alive(frozen.container_id)  # Docker still calls it running

        assert pool.check_health() == 1
        pool.fill()

        assert not runtime.is_alive(frozen.container_id)
        assert pool.counters.health_failures == 1
        assert pool.status().available == 1
        assert "pool_member_unhealthy" in logger.events()
    finally:
        pool.close(wait_s=30)
        for item in runtime.list_managed():
            runtime.stop(item.container_id)
