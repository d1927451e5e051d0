"""Packages end to end on Docker and QEMU: the real service builds the environment, a running
sandbox gets more packages without losing its variables, and a replacement has them all."""

from __future__ import annotations

import uuid

import docker
import pytest
from sandboxd_client import SandboxdClient, SandboxdError

from testkit.service import API_KEY, ServiceFactory, client_for


def test_packages_per_chat_on_docker(
    services: ServiceFactory, docker_client: docker.DockerClient
) -> None:
    repository = f"sandboxd-env-e2e-{uuid.uuid4().hex[:10]}"
    service = services(env_image_repository=repository)
    chat = str(uuid.uuid4())
    try:
        with client_for(service) as client:
            first = client.execute(
                chat,
                "x = 41\nimport tabulate\nprint(tabulate.__version__)",
                packages=["tabulate==0.9.0"],
            )
            assert first.exit_code == 0, first.stderr
            assert first.stdout.strip() == "0.9.0"
            assert first.sandbox.packages == ("tabulate==0.9.0",)
            image = docker_client.containers.get(first.sandbox.container_id).attrs["Config"]
            assert image["Image"].startswith(f"{repository}:python-v0.1-")

            # Installed into the running sandbox: the variable survives.
            second = client.execute(
                chat, "import tomli_w\nprint(x + 1)", packages=["tomli-w==1.0.0"]
            )
            assert second.exit_code == 0, second.stderr
            assert second.stdout.strip() == "42" and not second.state_lost
            assert second.sandbox.session_id == first.sandbox.session_id
            assert second.sandbox.packages == ("tabulate==0.9.0", "tomli-w==1.0.0")

            with pytest.raises(SandboxdError) as missing:
                client.execute(chat, "1", packages=["tabulate==99.9.9"])
            assert missing.value.status == 422
            assert missing.value.code == "environment_build_failed"
            assert "tabulate" in missing.value.message

            # The sandbox dies: its replacement starts from an environment with both.
            service.kill_sandbox(docker_client, second.sandbox.container_id)
            third = client.execute(chat, "import tabulate, tomli_w\nprint('both')")
            assert third.sandbox_replaced and third.stdout.strip() == "both", third.stderr
            assert third.sandbox.packages == ("tabulate==0.9.0", "tomli-w==1.0.0")
    finally:
        service.remove_sandboxes(docker_client)
        for found in docker_client.images.list(name=repository):
            for tag in found.tags:
                docker_client.images.remove(tag, force=True)


@pytest.mark.qemu
def test_packages_per_chat_on_qemu(services: ServiceFactory) -> None:
    """A new chat starts from a QEMU environment disk built with no network; packages added to
    its running microVM arrive through the agent channel and keep the chat's variables."""
    from testkit.qemu import ensure_qemu_images

    service = services(runtime="qemu", qemu_image_dir=ensure_qemu_images())
    chat = str(uuid.uuid4())
    # The first request builds the environment (a build VM, then its memory snapshot) under TCG:
    # minutes on a busy 2-core machine, so the client waits longer than its default.
    with SandboxdClient(service.http_url, api_key=API_KEY, timeout_s=900) as client:
        first = client.execute(
            chat,
            "x = 41\nimport tabulate\nprint(tabulate.__version__)",
            packages=["tabulate==0.9.0"],
            timeout_s=300,
        )
        assert first.exit_code == 0, first.stderr
        assert first.stdout.strip() == "0.9.0"
        assert first.sandbox.packages == ("tabulate==0.9.0",)

        second = client.execute(
            chat, "import iniconfig\nprint(x + 1)", packages=["iniconfig==2.0.0"], timeout_s=300
        )
        assert second.exit_code == 0, second.stderr
        assert second.stdout.strip() == "42" and not second.state_lost
        assert second.sandbox.session_id == first.sandbox.session_id
        assert second.sandbox.packages == ("iniconfig==2.0.0", "tabulate==0.9.0")
