"""The TypeScript client (clients/typescript) against a real ``sandboxd serve``: its own node:test
suite, compiled with the pinned TypeScript from set-up (scripts/setup.sh ops-tools runs npm ci),
run by node with the service's URL and key in the environment. No network beyond loopback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from testkit.service import API_KEY, ROOT, ServiceFactory

pytestmark = pytest.mark.docker

CLIENT = ROOT / "clients" / "typescript"


def test_typescript_client_against_the_service(module_services: ServiceFactory) -> None:
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

    service = module_services()
    env = {
        **os.environ,
        "SANDBOXD_URL": service.http_url,
        "SANDBOXD_API_KEY": API_KEY,
        "NO_COLOR": "1",
    }
    done = subprocess.run(
        [node, "--test", "--test-reporter=tap", "test/"],
        cwd=CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    counts = dict(re.findall(r"^# (pass|fail|skipped|todo) (\d+)$", done.stdout, re.MULTILINE))
    assert counts.get("fail") == "0", output[-3000:]
    assert counts.get("skipped") == "0", "live tests were skipped:\n" + output[-3000:]
    assert int(counts.get("pass", "0")) >= 10, output[-3000:]
