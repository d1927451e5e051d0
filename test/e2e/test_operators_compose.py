"""deploy/compose.yaml run for real: both images built offline (conftest.py), ``docker-compose up
-d`` under a project name of the test's own, with a random API key, free host ports and a data
dir in tmp. The service migrates and starts against the compose file's PostgreSQL, runs one
execution in a sibling sandbox, and its session record is read back over HTTP and with psql in
the postgres container. ``down -v`` and the sandboxes of its instance id are removed after.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import httpx
import pytest

from testkit.service import INSTANCE_LABEL, ROOT, free_port

pytestmark = pytest.mark.docker

COMPOSE = ROOT / "deploy" / "compose.yaml"


@dataclass(frozen=True)
class Deployment:
    url: str
    api_key: str
    compose: tuple[str, ...]  # docker-compose -p <project> -f ... ; append a subcommand
    env: dict[str, str]


def _compose(deployment: Deployment, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [*deployment.compose, *args],
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"docker-compose {' '.join(args)}:\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture
def deployment(
    docker_client: docker.DockerClient,
    service_image: str,
    postgres_image: str,
    sandbox_image: str,
    tmp_path: Path,
) -> Iterator[Deployment]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: scripts/setup.sh ops-tools")
    project = f"sandboxd-e2e-{uuid.uuid4().hex[:12]}"
    instance = project
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # What only a test needs: its own instance id (the label its sandboxes are removed by) and
    # the sandbox image it made sure of. An override file, as an operator would add one.
    override = tmp_path / "compose.override.yaml"
    override.write_text(
        "services:\n"
        "  sandboxd:\n"
        "    environment:\n"
        f"      SANDBOXD_INSTANCE_ID: {instance}\n"
        f"      SANDBOXD_DOCKER_IMAGE: {sandbox_image}\n"
    )
    port = free_port()
    deployment = Deployment(
        url=f"http://127.0.0.1:{port}",
        api_key=secrets.token_hex(24),
        compose=(binary, "-p", project, "-f", str(COMPOSE), "-f", str(override)),
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    deployment.env.update(
        SANDBOXD_API_KEYS=deployment.api_key,
        POSTGRES_PASSWORD=secrets.token_hex(16),
        SERVICE_IMAGE=service_image,
        POSTGRES_IMAGE=postgres_image,
        DATA_DIR=str(data_dir),
        HTTP_PORT=str(port),
        GRPC_PORT=str(free_port()),
    )
    try:
        _compose(deployment, "up", "-d", "--no-build")
        _wait_ready(deployment)
        yield deployment
    finally:
        subprocess.run(
            [*deployment.compose, "down", "-v", "--remove-orphans", "--timeout", "10"],
            env=deployment.env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        for sandbox in docker_client.containers.list(
            all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}
        ):
            sandbox.remove(force=True)


def _wait_ready(deployment: Deployment) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{deployment.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    logs = _compose(deployment, "logs", "--no-color", "--tail", "30")
    raise AssertionError(f"the compose deployment did not become ready:\n{logs}")


def test_compose_runs_the_service_with_postgres(deployment: Deployment) -> None:
    headers = {"Authorization": f"Bearer {deployment.api_key}"}
    chat = uuid.uuid4()
    result = httpx.post(
        f"{deployment.url}/v1/chats/{chat}/executions",
        json={"code": "print(6 * 7)"},
        headers=headers,
        timeout=120,
    )
    assert result.status_code == 200, result.text
    assert result.json()["stdout"].strip() == "42"
    # The key from the environment is the only one: another is refused.
    refused = httpx.get(
        f"{deployment.url}/v1/sandboxes", headers={"Authorization": "Bearer wrong"}, timeout=10
    )
    assert refused.status_code == 401
    listed = httpx.get(f"{deployment.url}/v1/sandboxes", headers=headers, timeout=10)
    assert listed.status_code == 200, listed.text
    assert [item["chat_id"] for item in listed.json()["items"]] == [str(chat)]
    # The record is in the compose file's PostgreSQL, not in a fallback store.
    rows = _compose(
        deployment,
        "exec", "-T", "postgres",
        "psql", "-U", "sandboxd", "-d", "sandboxd", "-tAc",
        "SELECT chat_id, status FROM sandbox_sessions",
    )  # fmt: skip
    assert rows.split() == [f"{chat}|running"]
