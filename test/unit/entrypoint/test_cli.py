"""The CLI drives the use cases through the composition root (providers overridden with fakes)."""

from __future__ import annotations

import json
from uuid import UUID

import pytest
from dependency_injector import providers

from entrypoint.cli import main
from entrypoint.container import Container
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.fakes import FakeRuntime

CHAT = "11111111-1111-1111-1111-111111111111"


@pytest.fixture
def container() -> Container:
    container = Container()
    container.runtime.override(providers.Object(FakeRuntime()))
    container.repository.override(providers.Object(InMemorySandboxSessionRepository()))
    container.locker.override(providers.Object(ProcessLocalSandboxLifecycleLocker()))
    return container


def test_exec_prints_the_output_and_returns_the_exit_code(container, capsys) -> None:
    assert main(["exec", "--chat-id", CHAT, "print(1)"], container=container) == 0
    assert capsys.readouterr().out == "print(1)"


def test_exec_json_and_sandbox_get_show_the_same_session(container, capsys) -> None:
    main(["exec", "--json", "--chat-id", CHAT, "x = 1"], container=container)
    executed = json.loads(capsys.readouterr().out)
    main(["sandbox", "get", "--chat-id", CHAT], container=container)
    fetched = json.loads(capsys.readouterr().out)

    assert executed["result"]["exit_code"] == 0
    assert fetched["session_id"] == executed["session"]["session_id"]
    assert UUID(fetched["chat_id"]) == UUID(CHAT)


def test_a_malformed_chat_id_is_a_clear_error_with_exit_status_2(container, capsys) -> None:
    assert main(["exec", "--chat-id", "nope", "print(1)"], container=container) == 2
    assert "InvalidChatIdError" in capsys.readouterr().err


def test_get_of_an_unknown_chat_exits_3(container, capsys) -> None:
    assert main(["sandbox", "get", "--chat-id", CHAT], container=container) == 3


def test_destroy_then_list_shows_nothing(container, capsys) -> None:
    main(["sandbox", "ensure", "--chat-id", CHAT], container=container)
    main(["sandbox", "destroy", "--chat-id", CHAT], container=container)
    capsys.readouterr()
    main(["sandboxes", "list"], container=container)
    assert json.loads(capsys.readouterr().out) == []


def test_exec_and_ensure_take_repeatable_packages(container, capsys) -> None:
    from testkit.fakes import FakeEnvironmentRuntime, FakeEnvironmentStore
    from usecase.environment import EnvironmentProvisioning

    store = FakeEnvironmentStore()
    container.environments.override(
        providers.Object(
            EnvironmentProvisioning(store, FakeEnvironmentRuntime(container.runtime()))
        )
    )
    args = ["exec", "--json", "--chat-id", CHAT, "--package", "pandas", "--package", "six", "1"]
    assert main(args, container=container) == 0
    session = json.loads(capsys.readouterr().out)["session"]
    assert "pandas" in session["packages"] and "six" in session["packages"]
    assert [env.packages for env in store.ensured] == [("pandas", "six")]
    ensure = ["sandbox", "ensure", "--chat-id", CHAT, "--language", "javascript"]
    assert main([*ensure, "--package", "lodash"], container=container) == 0
    assert "npm:lodash" in json.loads(capsys.readouterr().out)["packages"]
    assert main(["sandbox", "ensure", "--chat-id", CHAT, "--package", "a b c"], container) == 2


def test_pools_create_list_update_get_delete(container, capsys) -> None:
    from repository.pool_store import InMemoryPoolRepository

    container.pool_repository.override(providers.Object(InMemoryPoolRepository()))
    spec = ["--buffer-min", "1", "--buffer-max", "2", "--pool-max", "4"]
    assert main(["pools", "create", "np", "--package", "numpy", *spec], container=container) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["environment"]["packages"] == ["numpy"]
    assert created["status"] == {"total": 0, "allocated": 0, "available": 0, "revision": 1}
    main(["pools", "update", "np", "--buffer-min", "0", "--buffer-max", "3", "--pool-max", "5"],
         container=container)  # fmt: skip
    assert json.loads(capsys.readouterr().out)["capacitySpec"]["bufferMax"] == 3
    main(["pools", "list"], container=container)
    assert [pool["name"] for pool in json.loads(capsys.readouterr().out)] == ["np"]
    assert main(["pools", "delete", "np"], container=container) == 0
    capsys.readouterr()
    assert main(["pools", "get", "np"], container=container) == 3  # pool_not_found
    assert main(["pools", "create", "Bad_Name", *spec], container=container) == 2
    assert container.runtime().create_calls == []  # the CLI runs no pools of its own
