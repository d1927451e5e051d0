"""The TypeScript client (clients/typescript) against a real ``sandboxd serve``: its own node:test
suites, compiled with the pinned TypeScript from set-up (scripts/setup.sh ops-tools runs npm ci),
run by node with the service's URL and key in the environment. No network beyond loopback, except
the host fetching the one package the packages test asks for (as the service always does)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import docker
import pytest

from entrypoint.errors import ERROR_TABLE, INTERNAL_ERROR
from entrypoint.http.errors import _HTTP_CODES
from testkit.service import API_KEY, ROOT, ServiceFactory

CLIENT = ROOT / "clients" / "typescript"
# Small enough that the client's file_too_large test sends little.
MAX_FILE_BYTES = 8 * 1024 * 1024


def test_the_clients_error_codes_are_the_services() -> None:
    source = (CLIENT / "src" / "errors.ts").read_text()
    listed = re.search(r"ERROR_CODES = \[(.*?)\] as const", source, re.DOTALL)
    assert listed is not None
    client_codes = set(re.findall(r'"([a-z_]+)"', listed.group(1)))
    service_codes = {row.code for row in ERROR_TABLE} | {INTERNAL_ERROR}
    service_codes |= set(_HTTP_CODES.values()) | {"invalid_request", "not_ready"}
    assert client_codes == service_codes


@pytest.mark.docker
def test_typescript_client_against_the_service(
    module_services: ServiceFactory, docker_client: docker.DockerClient
) -> None:
    node = shutil.which("node")
    tsc = CLIENT / "node_modules" / ".bin" / "tsc"
    if node is None or not tsc.exists():
        pytest.fail("node or the client's dev dependencies are missing: scripts/setup.sh ops-tools")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(version.stdout.strip().lstrip("v").split(".")[0])
    assert major >= 18, version.stdout

    built = subprocess.run(
        [str(tsc), "-p", "tsconfig.json"], cwd=CLIENT, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr

    repository = f"sandboxd-env-ts-{uuid.uuid4().hex[:10]}"
    admin_key = f"ts-admin-{uuid.uuid4().hex}"
    service = module_services(
        max_file_bytes=str(MAX_FILE_BYTES),
        env_image_repository=repository,
        admin_keys=admin_key,
    )
    env = {
        **os.environ,
        "SANDBOXD_URL": service.http_url,
        "SANDBOXD_API_KEY": API_KEY,
        "SANDBOXD_ADMIN_KEY": admin_key,
        "SANDBOXD_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
        "NO_COLOR": "1",
    }
    suites = sorted(str(path.relative_to(CLIENT)) for path in CLIENT.glob("test/*.test.js"))
    try:
        done = subprocess.run(
            [node, "--test", "--test-reporter=tap", *suites],
            cwd=CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        for image in docker_client.images.list(name=repository):
            for tag in image.tags:
                docker_client.images.remove(tag, force=True)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    counts = dict(re.findall(r"^# (pass|fail|skipped|todo) (\d+)$", done.stdout, re.MULTILINE))
    assert counts.get("fail") == "0", output[-3000:]
    assert counts.get("skipped") == "0", "live tests were skipped:\n" + output[-3000:]
    assert int(counts.get("pass", "0")) >= 20, output[-3000:]
    assert len(suites) >= 4, suites
