"""Warm pools on QEMU microVMs: a claimed VM is rebound (vm.json; its clock is right), a
SIGSTOPped member fails the health check, and a package pool boots its members from the
environment's disk."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest

from adapter.clock import SystemClock
from adapter.qemu.vm import wait_until
from domain.pool import PoolCapacity, PoolDefinition
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.qemu import RuntimeFactory, run_ok
from testkit.world import CHAT, OTHER_CHAT
from usecase.pool import WarmPool
from usecase.sandbox import CreateSandbox, CreateSandboxCommand

pytestmark = pytest.mark.qemu


def test_a_claimed_vm_is_rebound_and_a_frozen_one_is_unhealthy(
    make_runtime: RuntimeFactory,
) -> None:
    runtime, _ = make_runtime(shared=True)
    repository = InMemorySandboxSessionRepository()
    pool = WarmPool(
        PoolDefinition("base", "python", (), PoolCapacity.fixed(1)),
        runtime,
        repository,
        SystemClock(),
        runtime._logger,
        health=runtime,
        health_timeout_s=1.0,
        rebinder=runtime,
    )
    try:
        pool.fill()
        (member,) = runtime.list_managed()
        vm_json = Path(runtime._vms_root) / member.container_id / "vm.json"
        assert json.loads(vm_json.read_text())["chat_id"] == str(member.session_id)
        assert pool.check_health() == 0

        session = CreateSandbox(
            repository,
            ProcessLocalSandboxLifecycleLocker(),
            runtime,
            SystemClock(),
            runtime._logger,
            timedelta(minutes=5),
            warm=_Source(pool),
        ).execute(CreateSandboxCommand(CHAT))

        assert session.container_id == member.container_id
        # Rewritten after the claim, off the path of the chat's first result.
        assert wait_until(lambda: json.loads(vm_json.read_text())["chat_id"] == str(CHAT), 10)
        guest_now = float(run_ok(runtime, session.container_id, "import time; print(time.time())"))
        assert abs(guest_now - time.time()) < 60  # set at its restore, kept while pooled
        # The agent took the largest pid space: its sweep skips /proc after executions up to
        # 0.4 s that started no process (a listing costs tens of ms under TCG).
        pid_max = run_ok(
            runtime, session.container_id, "print(open('/proc/sys/kernel/pid_max').read())"
        )
        assert int(pid_max) == 4 * 1024 * 1024
        assert {m.chat_id for m in runtime.list_managed()} >= {CHAT}

        pool.fill()
        idle = [m for m in runtime.list_managed() if m.container_id != session.container_id]
        (frozen,) = idle
        # Two members restored from one snapshot: each has entropy of its own without a reseed
        # at the claim (each was reseeded at its restore).
        urandom = "import os; print(os.urandom(16).hex())"
        assert run_ok(runtime, frozen.container_id, urandom) != run_ok(
            runtime, session.container_id, urandom
        )
        pid = int((Path(runtime._vms_root) / frozen.container_id / "qemu.pid").read_text())
        os.kill(pid, signal.SIGSTOP)
        try:
            assert pool.check_health() == 1
        finally:
            with contextlib.suppress(ProcessLookupError):  # destroyed by the health check
                os.kill(pid, signal.SIGCONT)
        assert not runtime.is_alive(frozen.container_id)

        # A member whose QEMU exited is never handed out: the chat gets a sandbox on demand.
        # The health check's refill boots the replacement in the background.
        assert wait_until(lambda: pool.status().available == 1, 120, interval_s=0.1)
        (dead,) = [m for m in runtime.list_managed() if m.container_id != session.container_id]
        started = runtime._connections.known(dead.container_id)
        assert started is not None and started.process is not None
        qemu = started.process
        qemu.kill()
        # Exited once reaped: a killed QEMU shows as a zombie while its threads still exit.
        assert wait_until(lambda: qemu.poll() is not None, 10)
        now = SystemClock().now()
        assert pool.claim(chat_id=OTHER_CHAT, created_at=now, expires_at=now) is None
        assert dead.container_id not in {m.container_id for m in runtime.list_managed()}
    finally:
        pool.close(wait_s=60)


class _Source:
    """The WarmSandboxSource over one pool (WarmPools keyed by environment, minus the keys)."""

    def __init__(self, pool: WarmPool) -> None:
        self._pool = pool

    def claim(self, *, chat_id, created_at, expires_at, packages=()):
        return self._pool.claim(chat_id=chat_id, created_at=created_at, expires_at=expires_at)

    def settle(self, session_id) -> None:
        self._pool.settle(session_id)

    def give_back(self, session_id) -> None:
        self._pool.give_back(session_id)

    def make_room(self) -> None:
        pass  # uncapped here

    def owns(self, session_id) -> bool:
        return self._pool.owns(session_id)


def test_vms_start_on_pooled_overlays(make_runtime: RuntimeFactory) -> None:
    from testkit.qemu import create_vm

    runtime, _ = make_runtime(shared=True, overlay_pool_size=1)
    first = create_vm(runtime)  # starts the pool; this overlay may be made on demand
    for _ in range(2000):  # the pool's own state, bounded only to fail a pool that never fills
        if runtime._overlays.available(runtime.image().base) >= 1:
            break
        time.sleep(0.01)
    second = create_vm(runtime)

    assert run_ok(runtime, second.container_id, "print(6 * 7)").strip() == "42"
    assert run_ok(runtime, first.container_id, "print(1)").strip() == "1"
    stats = runtime._overlays.stats()
    assert stats.pooled >= 1
    assert stats.pooled + stats.on_demand == 2


def test_a_package_pool_boots_members_from_the_environment_disk(
    make_runtime: RuntimeFactory,
) -> None:
    from adapter.environment.host_fetch import HostFetchConfig
    from adapter.qemu.environment import QemuEnvironmentConfig, QemuEnvironmentStore
    from adapter.qemu.environment_runtime import QemuEnvironmentRuntime
    from usecase.environment import EnvironmentProvisioning
    from usecase.pool import WarmPools

    runtime, logger = make_runtime(preload=())
    store = QemuEnvironmentStore(runtime, QemuEnvironmentConfig(service_version="0.1.0"), logger)
    environments = EnvironmentProvisioning(
        store, QemuEnvironmentRuntime(runtime, HostFetchConfig(), logger)
    )
    repository = InMemorySandboxSessionRepository()
    pools = WarmPools(
        runtime,
        repository,
        SystemClock(),
        logger,
        health=runtime,
        rebinder=runtime,
        environments=environments,
    )
    pools.apply([PoolDefinition("tab", "python", ("tabulate==0.9.0",), PoolCapacity.fixed(1))])
    pool = pools.get("tab")
    assert pool is not None
    try:
        pool.fill()
        (member,) = runtime.list_managed()
        key = store.key_for(pool.definition.environment)
        started = [a for a in logger.named("qemu_vm_started") if a.get("environment") == key]
        assert len(started) == 1  # the member, booted from the environment's disk
        now = SystemClock().now()
        assert pools.claim(chat_id=CHAT, created_at=now, expires_at=now) is None  # base: none

        session = CreateSandbox(
            repository,
            ProcessLocalSandboxLifecycleLocker(),
            runtime,
            SystemClock(),
            logger,
            timedelta(minutes=5),
            environments=environments,
            warm=pools,
        ).execute(CreateSandboxCommand(OTHER_CHAT, ("tabulate==0.9.0",)))

        assert session.container_id == member.container_id
        assert session.packages == ("tabulate==0.9.0",)
        vm_json = Path(runtime._vms_root) / member.container_id / "vm.json"
        assert wait_until(lambda: json.loads(vm_json.read_text())["chat_id"] == str(OTHER_CHAT), 10)
        assert (
            run_ok(
                runtime, session.container_id, "import tabulate; print(tabulate.__version__)"
            ).strip()
            == "0.9.0"
        )
    finally:
        pools.close(wait_s=120)
