"""Packages over HTTP: PUT /v1/chats/{id}/sandbox and executions (JSON and SSE), and the error
rows: invalid_package (422), environment_build_failed (422), package_not_allowed (403), and a
runtime without environments (503, naming qemu there)."""

from __future__ import annotations

import json
import warnings

import pytest
from dependency_injector import providers

from domain.errors import EnvironmentBuildError, InvalidInputError
from testkit.container import AUTH, make_container
from testkit.fakes import FakeEnvironmentRuntime, FakeEnvironmentStore, FakeRuntime
from usecase.environment import EnvironmentProvisioning, PackageAllowList

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from fastapi.testclient import TestClient  # noqa: E402

CHAT = "3f2d6a0e-8c1b-4c2e-9a55-0d7f1b2c3d4e"


def client_with(
    store: FakeEnvironmentStore | None,
    allow: frozenset[str] | None = None,
    runtime_kind: str = "docker",
):
    runtime = FakeRuntime()
    container = make_container(runtime)
    settings = container.settings().model_copy(update={"runtime": runtime_kind})
    container.settings.override(providers.Object(settings))
    if store is not None:
        provisioning = EnvironmentProvisioning(
            store, FakeEnvironmentRuntime(runtime), PackageAllowList(allow)
        )
        container.environments.override(providers.Object(provisioning))
    return TestClient(container.http_app(), raise_server_exceptions=False), runtime, container


def test_put_with_packages_creates_from_the_environment_and_shows_them() -> None:
    store = FakeEnvironmentStore()
    client, _, container = client_with(store)
    with client:
        response = client.put(
            f"/v1/chats/{CHAT}/sandbox", json={"packages": ["Pandas>=2"]}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        assert response.json()["packages"] == ["pandas>=2"]
        assert [env.packages for env in store.ensured] == [("pandas>=2",)]
        # A PUT without a body still works and keeps the sandbox's packages.
        again = client.put(f"/v1/chats/{CHAT}/sandbox", headers=AUTH)
        assert again.status_code == 200 and again.json()["packages"] == ["pandas>=2"]
    container.api().close()


def test_execute_with_packages_json_and_sse() -> None:
    store = FakeEnvironmentStore()
    client, _, container = client_with(store)
    with client:
        body = {"code": "print(1)", "packages": ["tabulate==0.9.0"]}
        response = client.post(f"/v1/chats/{CHAT}/executions", json=body, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["session"]["packages"] == ["tabulate==0.9.0"]
        streamed = client.post(
            f"/v1/chats/{CHAT}/executions",
            json={"code": "print(2)", "packages": ["requests"]},
            headers={**AUTH, "Accept": "text/event-stream"},
        )
        assert streamed.status_code == 200
        assert "event: result" in streamed.text
        result = next(
            line
            for line in streamed.text.splitlines()
            if line.startswith("data:") and "session" in line
        )
        assert json.loads(result[5:])["session"]["packages"] == ["requests", "tabulate==0.9.0"]
    container.api().close()


def test_a_malformed_requirement_is_422_invalid_package() -> None:
    client, _, container = client_with(FakeEnvironmentStore())
    with client:
        response = client.put(
            f"/v1/chats/{CHAT}/sandbox",
            json={"packages": ["git+https://example.com/x.git"]},
            headers=AUTH,
        )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_package"
    assert "git+https://example.com/x.git" in response.json()["message"]
    container.api().close()


def test_an_unknown_package_is_422_environment_build_failed_with_pips_message() -> None:
    message = "No matching distribution found for no-such-package-xyz"
    client, _, container = client_with(FakeEnvironmentStore(EnvironmentBuildError(message, "x")))
    with client:
        response = client.post(
            f"/v1/chats/{CHAT}/executions",
            json={"code": "1", "packages": ["no-such-package-xyz"]},
            headers=AUTH,
        )
    assert response.status_code == 422
    body = response.json()
    assert (body["code"], body["message"]) == ("environment_build_failed", message)
    container.api().close()


def test_a_package_off_the_allow_list_is_403() -> None:
    client, _, container = client_with(FakeEnvironmentStore(), allow=frozenset({"pandas"}))
    with client:
        response = client.put(
            f"/v1/chats/{CHAT}/sandbox", json={"packages": ["requests"]}, headers=AUTH
        )
    assert response.status_code == 403
    assert response.json()["code"] == "package_not_allowed"
    assert "requests" in response.json()["message"]
    container.api().close()


def test_the_allow_list_file_is_read_from_settings(tmp_path) -> None:
    allow = tmp_path / "allow.txt"
    allow.write_text("# data\nPandas\n\nscikit_learn  # ml\n")
    from entrypoint.container import _allow_list
    from entrypoint.settings import Settings

    assert _allow_list(Settings(package_allowlist=allow)).names == frozenset(
        {"pandas", "scikit-learn"}
    )


def test_an_unreadable_allow_list_is_a_clear_configuration_error(tmp_path) -> None:
    from entrypoint.container import _allow_list
    from entrypoint.settings import Settings

    with pytest.raises(InvalidInputError, match="SANDBOXD_PACKAGE_ALLOWLIST"):
        _allow_list(Settings(package_allowlist=tmp_path / "missing.txt"))


def test_packages_on_a_runtime_without_environments_fail_clearly_and_the_base_works() -> None:
    client, _, container = client_with(None, runtime_kind="qemu")
    with client:
        refused = client.put(
            f"/v1/chats/{CHAT}/sandbox", json={"packages": ["pandas"]}, headers=AUTH
        )
        assert refused.status_code == 501
        assert refused.json()["code"] == "environments_unsupported"
        assert "not available on this runtime" in refused.json()["message"]
        assert client.put(f"/v1/chats/{CHAT}/sandbox", headers=AUTH).status_code == 200
    container.api().close()


def test_the_python_client_sends_packages() -> None:
    import asyncio

    from sandboxd_client import AsyncSandboxdClient, ExecutionResult, SandboxdClient

    from testkit.container import API_KEY
    from testkit.live import live_service

    runtime = FakeRuntime()
    container = make_container(runtime)
    store = FakeEnvironmentStore()
    container.environments.override(
        providers.Object(EnvironmentProvisioning(store, FakeEnvironmentRuntime(runtime)))
    )
    try:
        with (
            live_service(container) as live,
            SandboxdClient(live.http_url, api_key=API_KEY) as client,
        ):
            ensured = client.ensure_sandbox(CHAT, packages=["is-number"], language="javascript")
            assert ensured.packages == ("npm:is-number",)
            result = client.execute(CHAT, "x", packages=["six"])
            assert result.sandbox.packages == ("six", "npm:is-number")
            streamed = list(client.execute_stream(CHAT, "y", packages=["tabulate"]))
            last = streamed[-1]
            assert isinstance(last, ExecutionResult)
            assert "tabulate" in last.sandbox.packages
            assert client.ensure_sandbox(CHAT).packages == ("six", "tabulate", "npm:is-number")

            async def run_async() -> tuple[str, ...]:
                async with AsyncSandboxdClient(live.http_url, api_key=API_KEY) as aclient:
                    await aclient.ensure_sandbox(CHAT, packages=["toolz"])
                    done = await aclient.execute(CHAT, "z", packages=["attrs"])
                    return done.sandbox.packages

            assert {"toolz", "attrs"} <= set(asyncio.run(run_async()))
    finally:
        runtime.gate.set()


def test_the_package_refusals_are_in_the_document_of_both_routes_that_take_packages() -> None:
    # Schemathesis (test/e2e/test_api_fuzz_e2e.py) found a PUT answering an undocumented 403.
    client, _, container = client_with(FakeEnvironmentStore(), allow=frozenset({"pandas"}))
    with client:
        paths = client.get("/openapi.json").json()["paths"]
        answered = {
            client.put(
                f"/v1/chats/{CHAT}/sandbox", json={"packages": ["requests"]}, headers=AUTH
            ).status_code,
            client.post(
                f"/v1/chats/{CHAT}/executions",
                json={"code": "1", "packages": ["requests"]},
                headers=AUTH,
            ).status_code,
        }
    container.api().close()
    assert answered == {403}
    for path, method in (
        ("/chats/{chat_id}/sandbox", "put"),
        ("/chats/{chat_id}/executions", "post"),
    ):
        assert {"403", "501"} <= set(paths["/v1" + path][method]["responses"]), path
