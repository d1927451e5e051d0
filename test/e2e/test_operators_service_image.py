"""The service's own container image, built offline (deploy/image/build.py), started once with the
host's Docker engine and an SQLite data dir: /healthz answers and one execution runs in a sibling
sandbox container. The service container and its sandboxes are removed by id and instance label.
The images are built once per session (conftest.py); test_operators_compose.py runs the same one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
from docker.models.containers import Container

from testkit.service import API_KEY, INSTANCE_LABEL, free_port

pytestmark = pytest.mark.docker

SOCKET = "/var/run/docker.sock"


@pytest.fixture
def running_service(
    docker_client: docker.DockerClient, service_image: str, sandbox_image: str, tmp_path: Path
) -> Iterator[str]:
    instance = f"e2e-image-{uuid.uuid4().hex[:12]}"
    # The same path inside and out: sandboxes bind-mount their channel dir from it, and dockerd
    # resolves that path on the host.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    # Created, then started inside the try: a start that fails (once, the host's bridge was
    # gone) must not leave the container behind.
    container = docker_client.containers.create(
        service_image,
        environment={
            "SANDBOXD_API_KEYS": API_KEY,
            "SANDBOXD_DATA_DIR": str(data_dir),
            "SANDBOXD_INSTANCE_ID": instance,
            "SANDBOXD_DOCKER_IMAGE": sandbox_image,
            "SANDBOXD_LOG_FORMAT": "json",
        },
        volumes={
            SOCKET: {"bind": SOCKET, "mode": "rw"},
            str(data_dir): {"bind": str(data_dir), "mode": "rw"},
        },
        ports={"8080/tcp": ("127.0.0.1", port)},
        labels={"sandboxd.test": instance},
    )
    try:
        container.start()
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(container, url)
        yield url
    finally:
        container.remove(force=True)
        for sandbox in docker_client.containers.list(
            all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}
        ):
            sandbox.remove(force=True)


def _wait_healthy(container: Container, url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            break
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    logs = container.logs(tail=40).decode(errors="replace")
    raise AssertionError(f"the service container did not become ready:\n{logs}")


def test_service_image_serves_and_executes(running_service: str) -> None:
    health = httpx.get(f"{running_service}/healthz", timeout=5)
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    chat = uuid.uuid4()
    result = httpx.post(
        f"{running_service}/v1/chats/{chat}/executions",
        json={"code": "import sys; print(sys.version_info[:2], 6 * 7)"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
    )
    assert result.status_code == 200, result.text
    body = result.json()
    assert body["exit_code"] == 0
    assert body["stdout"].strip().endswith("42")
    assert body["session"]["runtime_kind"] == "docker"
    # /docs works from the image too: its assets are in the installed wheel.
    docs = httpx.get(f"{running_service}/docs-assets/swagger-ui-bundle.js", timeout=10)
    assert docs.status_code == 200


def test_service_image_runs_doctor(docker_client: docker.DockerClient, service_image: str) -> None:
    """``sandboxd doctor`` inside the image, with the host's engine: the docker line is ok."""
    label = f"sandboxd.test=e2e-doctor-{uuid.uuid4().hex[:12]}"
    try:
        output = docker_client.containers.run(
            service_image,
            command=["doctor"],
            volumes={SOCKET: {"bind": SOCKET, "mode": "rw"}},
            labels=dict([label.split("=", 1)]),
            remove=True,
        ).decode()
    finally:
        # remove=True does not cover a container whose start failed.
        for left in docker_client.containers.list(all=True, filters={"label": label}):
            left.remove(force=True)
    assert "[ok  ] docker: engine " in output, output
