"""Packages added to a running Docker sandbox keep its state, and the sandbox fetches nothing."""

from __future__ import annotations

import shutil
from uuid import uuid4

import pytest

from adapter.docker.runtime import DockerSandboxConfig, DockerSandboxRuntime
from adapter.environment.host_fetch import HostFetchConfig
from adapter.environment.live_install import DockerEnvironmentRuntime
from adapter.logging import ServiceLogger
from domain.environment import Environment
from domain.errors import EnvironmentBuildError
from domain.execution import Language
from testkit.runtime import (
    CREATED_AT,
    EXPIRES_AT,
    Sandbox,
    remove_instance_containers,
    short_temp_dir,
)


@pytest.fixture
def docker_runtime(client, base_image):
    instance_id = f"test-{uuid4().hex[:12]}"
    data_dir = short_temp_dir("sbxl-")
    runtime = DockerSandboxRuntime(
        client,
        DockerSandboxConfig(image=base_image, instance_id=instance_id, data_dir=data_dir),
        ServiceLogger("test-live-install"),
    )
    yield runtime
    remove_instance_containers(instance_id)
    runtime.close()
    shutil.rmtree(data_dir, ignore_errors=True)


def test_packages_go_into_a_running_sandbox_without_losing_its_variables(docker_runtime):
    environments = DockerEnvironmentRuntime(
        docker_runtime, HostFetchConfig(), ServiceLogger("test")
    )
    session = docker_runtime.create(
        session_id=uuid4(), chat_id=uuid4(), created_at=CREATED_AT, expires_at=EXPIRES_AT
    )
    sandbox = Sandbox(docker_runtime, session)
    assert sandbox.run("x = 41\nimport tabulate").exit_code != 0  # not there yet

    environments.install_packages(
        session.container_id, Environment(Language.PYTHON, ("tabulate==0.9.0",))
    )
    result = sandbox.run(
        "import tabulate, subprocess, sys\n"
        "print(x + 1, tabulate.__version__, tabulate.__file__)\n"
        "print(subprocess.run([sys.executable, '-c', 'import tabulate'], check=False).returncode)"
    )
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.split()
    assert lines[:2] == ["42", "0.9.0"]
    assert lines[2].startswith("/workspace/.sandboxd/site-packages/")
    assert lines[3] == "0"  # child processes find it too
    # Nothing is left in the channel for the sandbox (the hand-off directory is gone).
    channel = docker_runtime.channel_dir(session.container_id)
    assert channel is not None and not list(channel.glob("packages-*"))

    sandbox.run("y = 'kept'", language=Language.JAVASCRIPT)
    environments.install_packages(
        session.container_id, Environment(Language.JAVASCRIPT, ("is-number@7.0.0",))
    )
    node = sandbox.run("console.log(y, require('is-number')(5))", language=Language.JAVASCRIPT)
    assert node.exit_code == 0, node.stderr
    assert node.stdout.strip() == "kept true"


def test_a_version_that_does_not_exist_fails_with_pips_message(docker_runtime):
    environments = DockerEnvironmentRuntime(
        docker_runtime, HostFetchConfig(), ServiceLogger("test")
    )
    session = docker_runtime.create(
        session_id=uuid4(), chat_id=uuid4(), created_at=CREATED_AT, expires_at=EXPIRES_AT
    )
    with pytest.raises(EnvironmentBuildError, match="tabulate") as caught:
        environments.install_packages(
            session.container_id, Environment(Language.PYTHON, ("tabulate==99.0.0",))
        )
    assert caught.value.package is not None
