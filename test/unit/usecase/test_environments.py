"""Packages per chat through CreateSandbox and ExecuteCode, with fakes of the environment ports."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.environment import Environment
from domain.errors import (
    EnvironmentBuildError,
    EnvironmentsUnsupportedError,
    InvalidPackageError,
    PackageNotAllowedError,
    SandboxGoneError,
)
from domain.execution import ExecutionRequest, Language
from testkit.fakes import FakeEnvironmentRuntime, FakeEnvironmentStore
from testkit.world import CHAT, TTL, World
from usecase.environment import EnvironmentProvisioning, PackageAllowList
from usecase.execute import ExecuteCode, ExecuteCodeCommand
from usecase.sandbox import CreateSandbox, CreateSandboxCommand


@pytest.fixture
def store() -> FakeEnvironmentStore:
    return FakeEnvironmentStore()


@pytest.fixture
def env_runtime(world: World) -> FakeEnvironmentRuntime:
    return FakeEnvironmentRuntime(world.runtime)


def create_use_case(
    world: World,
    store: FakeEnvironmentStore,
    env_runtime: FakeEnvironmentRuntime,
    allow: frozenset[str] | None = None,
) -> CreateSandbox:
    return world.create_sandbox(
        environments=EnvironmentProvisioning(store, env_runtime, PackageAllowList(allow)),
    )


def test_a_new_chat_with_packages_starts_from_their_environment(world, store, env_runtime):
    session = create_use_case(world, store, env_runtime).execute(
        CreateSandboxCommand(CHAT, ("Pandas>=2", "requests"))
    )
    assert store.ensured == [Environment(Language.PYTHON, ("pandas>=2", "requests"))]
    assert len(env_runtime.created_from) == 1
    assert session.packages == ("pandas>=2", "requests")
    assert world.repository.get(session.session_id) == session


def test_a_new_chat_without_packages_is_created_exactly_as_before(world, store, env_runtime):
    create_use_case(world, store, env_runtime).execute(CreateSandboxCommand(CHAT))
    assert store.ensured == [] and env_runtime.created_from == []
    assert len(world.runtime.create_calls) == 1


def test_missing_packages_are_installed_into_the_running_sandbox(world, store, env_runtime):
    use_case = create_use_case(world, store, env_runtime)
    first = use_case.execute(CreateSandboxCommand(CHAT, ("pandas",)))
    second = use_case.execute(CreateSandboxCommand(CHAT, ("pandas", "requests==2.31.0")))
    assert second.session_id == first.session_id  # same sandbox: its state survives
    assert env_runtime.installed == [
        (first.container_id, Environment(Language.PYTHON, ("requests==2.31.0",)))
    ]
    assert second.packages == ("pandas", "requests==2.31.0")
    assert world.repository.get_active_by_chat_id(CHAT) == second
    assert "sandbox_packages_installed" in world.logger.events()
    # Asking again for what it has installs nothing.
    use_case.execute(CreateSandboxCommand(CHAT, ("requests==2.31.0",)))
    assert len(env_runtime.installed) == 1


def test_a_failed_install_keeps_the_session_as_it_was(world, store, env_runtime):
    use_case = create_use_case(world, store, env_runtime)
    first = use_case.execute(CreateSandboxCommand(CHAT, ("pandas",)))
    env_runtime.fail_install = EnvironmentBuildError("no such version", package="nope")
    with pytest.raises(EnvironmentBuildError):
        use_case.execute(CreateSandboxCommand(CHAT, ("nope==9",)))
    assert world.repository.get_active_by_chat_id(CHAT) == first


def test_a_replacement_starts_from_everything_the_old_sandbox_had(world, store, env_runtime):
    use_case = create_use_case(world, store, env_runtime)
    use_case.execute(CreateSandboxCommand(CHAT, ("pandas",)))
    use_case.execute(CreateSandboxCommand(CHAT, ("requests",)))  # installed live
    world.clock.advance(TTL + timedelta(seconds=1))
    replaced = use_case.execute(CreateSandboxCommand(CHAT))
    assert store.ensured[-1] == Environment(Language.PYTHON, ("pandas", "requests"))
    assert replaced.packages == ("pandas", "requests")


def test_a_request_wins_over_the_recorded_constraint_on_replacement(world, store, env_runtime):
    use_case = create_use_case(world, store, env_runtime)
    use_case.execute(CreateSandboxCommand(CHAT, ("pandas==2.0.3",)))
    world.clock.advance(TTL + timedelta(seconds=1))
    replaced = use_case.execute(CreateSandboxCommand(CHAT, ("pandas==2.1.0",)))
    assert replaced.packages == ("pandas==2.1.0",)


def test_npm_packages_are_recorded_with_their_prefix_and_installed_live_next_to_python(
    world, store, env_runtime
):
    use_case = create_use_case(world, store, env_runtime)
    use_case.execute(CreateSandboxCommand(CHAT, ("pandas",)))
    session = use_case.execute(CreateSandboxCommand(CHAT, ("lodash@4.17.21",), Language.JAVASCRIPT))
    assert session.packages == ("pandas", "npm:lodash@4.17.21")
    world.clock.advance(TTL + timedelta(seconds=1))
    replaced = use_case.execute(CreateSandboxCommand(CHAT))
    # Python's environment is the image; the npm package goes in live after the start.
    assert store.ensured[-1] == Environment(Language.PYTHON, ("pandas",))
    assert env_runtime.installed[-1] == (
        replaced.container_id,
        Environment(Language.JAVASCRIPT, ("lodash@4.17.21",)),
    )


def test_a_malformed_requirement_is_refused_before_anything_happens(world, store, env_runtime):
    with pytest.raises(InvalidPackageError, match="refused"):
        create_use_case(world, store, env_runtime).execute(
            CreateSandboxCommand(CHAT, ("--index-url=http://evil",))
        )
    assert world.runtime.create_calls == [] and store.ensured == []


def test_packages_off_the_allow_list_are_refused_naming_them(world, store, env_runtime):
    use_case = create_use_case(world, store, env_runtime, allow=frozenset({"pandas"}))
    with pytest.raises(PackageNotAllowedError, match="requests"):
        use_case.execute(CreateSandboxCommand(CHAT, ("pandas", "Requests")))
    assert world.runtime.create_calls == []
    assert use_case.execute(CreateSandboxCommand(CHAT, ("pandas",))).packages == ("pandas",)


def test_a_build_failure_creates_nothing(world, store, env_runtime):
    store.fail = EnvironmentBuildError("No matching distribution found for nope", package="nope")
    with pytest.raises(EnvironmentBuildError):
        create_use_case(world, store, env_runtime).execute(CreateSandboxCommand(CHAT, ("nope",)))
    assert world.repository.get_active_by_chat_id(CHAT) is None


def test_packages_on_a_runtime_without_environments_fail_clearly(world):
    use_case = world.create_sandbox(
        no_environments_reason="package environments are not available on the qemu runtime yet",
    )
    with pytest.raises(EnvironmentsUnsupportedError, match="qemu runtime yet"):
        use_case.execute(CreateSandboxCommand(CHAT, ("pandas",)))
    assert world.runtime.create_calls == []
    use_case.execute(CreateSandboxCommand(CHAT))  # the base environment still works


def test_execute_code_installs_missing_packages_then_runs(world, store, env_runtime):
    use_case = ExecuteCode(
        world.repository,
        world.locker,
        world.runtime,
        world.clock,
        world.logger,
        TTL,
        environments=EnvironmentProvisioning(store, env_runtime),
    )
    request = ExecutionRequest(code="import pandas", language=Language.PYTHON)
    first = use_case.execute(ExecuteCodeCommand(CHAT, request, ("pandas",)))
    assert first.session.packages == ("pandas",) and len(env_runtime.created_from) == 1
    second = use_case.execute(ExecuteCodeCommand(CHAT, request, ("scipy",)))
    assert second.session.session_id == first.session.session_id
    assert second.session.packages == ("pandas", "scipy")
    assert world.repository.get_active_by_chat_id(CHAT).packages == ("pandas", "scipy")
    # The sandbox dies: the replacement starts from an environment with both.
    world.runtime.die_on_execute.add(second.session.container_id)
    third = use_case.execute(ExecuteCodeCommand(CHAT, request))
    assert third.result.sandbox_replaced
    assert store.ensured[-1] == Environment(Language.PYTHON, ("pandas", "scipy"))


def test_a_sandbox_that_died_before_the_install_is_replaced_with_the_packages(
    world, store, env_runtime
):
    use_case = create_use_case(world, store, env_runtime)
    first = use_case.execute(CreateSandboxCommand(CHAT, ("pandas",)))
    env_runtime.fail_install = SandboxGoneError(first.container_id)
    second = use_case.execute(CreateSandboxCommand(CHAT, ("requests",)))
    assert second.session_id != first.session_id
    assert store.ensured[-1] == Environment(Language.PYTHON, ("pandas", "requests"))
    assert second.packages == ("pandas", "requests")
