"""End to end through the CLI: ExecuteCode with the Docker runtime and the SQLite store.

Each `sandboxd exec` is its own process, so the second call finds the sandbox through the
session store and the container's labels, and sees the first call's variables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from adapter.docker.image import ensure_docker_image
from testkit.runtime import (
    docker_client,
    image_data_dir,
    remove_instance_containers,
    short_temp_dir,
)

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def cli_env() -> Iterator[dict[str, str]]:
    image = ensure_docker_image(docker_client(), image_data_dir())
    data_dir = short_temp_dir("sbxt-cli-")
    instance_id = f"test-{uuid4().hex[:12]}"
    env = {
        **os.environ,
        "SANDBOXD_RUNTIME": "docker",
        "SANDBOXD_DATA_DIR": str(data_dir),
        "SANDBOXD_DATABASE_URL": "",
        "SANDBOXD_INSTANCE_ID": instance_id,
        "SANDBOXD_DOCKER_IMAGE": image,
        "SANDBOXD_LOG_LEVEL": "warning",
    }
    try:
        yield env
    finally:
        remove_instance_containers(instance_id)
        shutil.rmtree(data_dir, ignore_errors=True)


def sandboxd(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoint.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_exec_twice_in_one_chat_keeps_variables(cli_env: dict[str, str]) -> None:
    chat = str(uuid4())
    first = sandboxd(cli_env, "exec", "--chat-id", chat, "x = 41; print('first')")
    assert (first.returncode, first.stdout) == (0, "first\n"), first.stderr
    second = sandboxd(cli_env, "exec", "--chat-id", chat, "--json", "print(x + 1)")
    assert second.returncode == 0, second.stderr
    payload = json.loads(second.stdout)
    assert payload["result"]["stdout"] == "42\n"
    assert payload["result"]["state_lost"] is False
    assert payload["session"]["runtime_kind"] == "docker"

    other_chat = sandboxd(cli_env, "exec", "--chat-id", str(uuid4()), "print(x)")
    assert other_chat.returncode == 1
    assert "NameError" in other_chat.stderr

    failing = sandboxd(cli_env, "exec", "--chat-id", chat, "--timeout", "1", "while True: pass")
    assert failing.returncode == 124
    assert "timed out" in failing.stderr

    destroyed = sandboxd(cli_env, "sandbox", "destroy", "--chat-id", chat)
    assert destroyed.returncode == 0, destroyed.stderr


def test_exec_without_the_image_says_how_to_build_it(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "SANDBOXD_DOCKER_IMAGE": "sandboxd-sandbox:not-built"}
    result = sandboxd(env, "exec", "--chat-id", str(uuid4()), "print(1)")
    assert result.returncode == 4
    assert "sandboxd image build" in result.stderr


def test_a_killed_sandbox_is_replaced_and_the_result_says_so(cli_env: dict[str, str]) -> None:
    chat = str(uuid4())
    first = sandboxd(cli_env, "exec", "--chat-id", chat, "--json", "x = 1")
    assert first.returncode == 0, first.stderr
    container_id = json.loads(first.stdout)["session"]["container_id"]
    subprocess.run(["docker", "kill", container_id], check=True, capture_output=True)

    second = sandboxd(cli_env, "exec", "--chat-id", chat, "--json", "print('x' in globals())")
    assert second.returncode == 0, second.stderr
    payload = json.loads(second.stdout)
    assert payload["result"]["stdout"] == "False\n"
    assert payload["result"]["sandbox_replaced"] is True
    assert payload["result"]["state_lost"] is True
    assert payload["session"]["container_id"] != container_id


def test_image_build_is_a_no_op_when_nothing_changed(cli_env: dict[str, str]) -> None:
    env = {**cli_env, "SANDBOXD_DATA_DIR": str(image_data_dir()), "SANDBOXD_DOCKER_IMAGE": ""}
    result = sandboxd(env, "image", "build", "--runtime", "docker")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == cli_env["SANDBOXD_DOCKER_IMAGE"]
    assert "is up to date" in result.stderr
