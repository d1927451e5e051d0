"""A warm pool of a package environment on the real Docker engine: members start from the
environment's image (built once by the store), a new chat asking for exactly that set gets one
and imports the package at once; another set gets no pooled sandbox."""

from __future__ import annotations

from datetime import timedelta

import docker
import pytest

from adapter.clock import SystemClock
from adapter.environment.host_fetch import HostFetchConfig
from adapter.environment.live_install import DockerEnvironmentRuntime
from domain.execution import ExecutionRequest
from domain.pool import PoolCapacity, PoolDefinition
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.environment import StoreFactory
from testkit.fakes import FakeLogger
from testkit.runtime import docker_runtime
from testkit.world import CHAT, OTHER_CHAT
from usecase.environment import EnvironmentProvisioning
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.pool import WarmPools

pytestmark = pytest.mark.docker


def test_a_package_pool_serves_exactly_its_set(
    make_store: StoreFactory, client: docker.APIClient
) -> None:
    logger = FakeLogger()
    store = make_store(logger)
    repository = InMemorySandboxSessionRepository()
    with docker_runtime() as runtime:
        environments = EnvironmentProvisioning(
            store, DockerEnvironmentRuntime(runtime, HostFetchConfig(), logger)
        )
        pools = WarmPools(
            runtime, repository, SystemClock(), logger, runtime, environments=environments
        )
        # Written unlike the request below: the pool and the chat normalise alike.
        pools.apply(
            [PoolDefinition("tab", "python", ("Tabulate == 0.9.0",), PoolCapacity.fixed(1))]
        )
        pool = pools.get("tab")
        assert pool is not None
        try:
            pool.fill()
            (member,) = runtime.list_managed()
            image = client.inspect_container(member.container_id)["Config"]["Image"]
            assert image.startswith(f"{store.config.repository}:")  # the environment's image
            assert logger.events().count("environment_built") == 1

            execute = ExecuteCode(
                repository,
                ProcessLocalSandboxLifecycleLocker(),
                runtime,
                SystemClock(),
                logger,
                timedelta(minutes=5),
                environments=environments,
                warm=pools,
            )
            code = "import tabulate; print(tabulate.__version__)"
            pooled = execute.execute(
                ExecuteCodeCommand(CHAT, ExecutionRequest(code=code), packages=("tabulate==0.9.0",))
            )
            assert pooled.result.stdout.strip() == "0.9.0", pooled.result.stderr
            assert pooled.session.container_id == member.container_id
            assert pooled.session.packages == ("tabulate==0.9.0",)
            assert pool.counters.claimed == 1

            other = execute.execute(
                ExecuteCodeCommand(
                    OTHER_CHAT, ExecutionRequest(code="print(1)"), packages=("six==1.16.0",)
                )
            )
            assert other.session.session_id != member.session_id
            assert not pools.owns(other.session.session_id)
            assert pool.counters.claimed == 1 and pools.on_demand == 1
            assert logger.events().count("environment_built") == 2  # tabulate's once, six's
        finally:
            pools.close(wait_s=60)
