"""Docker-specific checks: the hardened container configuration, labels, reconnection, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import docker
import pytest

from adapter.docker.runtime import (
    LABEL_CHANNEL,
    LABEL_CHAT,
    LABEL_INSTANCE,
    LABEL_RUNTIME,
    LABEL_SESSION,
    DockerSandboxConfig,
    DockerSandboxRuntime,
)
from adapter.logging import ServiceLogger
from domain.errors import RuntimeUnavailableError, SandboxGoneError
from domain.execution import ExecutionRequest, Language
from testkit.runtime import (
    create_sandbox,
    docker_client,
    docker_runsc_runtime,
    docker_runtime,
    short_temp_dir,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def runtime() -> Iterator[DockerSandboxRuntime]:
    with docker_runtime() as made:
        yield made


def test_container_is_hardened(runtime: DockerSandboxRuntime) -> None:
    sandbox = create_sandbox(runtime)
    try:
        info = docker.APIClient(version="auto").inspect_container(sandbox.id)
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        # Only the agent (root in the container) has these; user code runs as 1000 with none.
        assert host["CapDrop"] == ["ALL"]
        assert sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Privileged"] is False
        assert host["PidsLimit"] == 128
        assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
        assert host["NanoCpus"] == 1_000_000_000
        assert set(host["Tmpfs"]) == {"/workspace", "/tmp"}
        assert "size=256m" in host["Tmpfs"]["/workspace"]
        assert info["Config"]["User"] == "0:0"
        assert info["Config"]["Cmd"][-2:] == ["--user", "1000:1000"]
        # The agent's channel is the only host path in the container.
        mounts = info["Mounts"]
        assert [(m["Type"], m["Destination"]) for m in mounts] == [("bind", "/run/sandboxd")]
        assert mounts[0]["Source"] == info["Config"]["Labels"][LABEL_CHANNEL]
        labels = info["Config"]["Labels"]
        assert labels[LABEL_SESSION] == str(sandbox.session.session_id)
        assert labels[LABEL_CHAT] == str(sandbox.session.chat_id)
        assert labels[LABEL_INSTANCE].startswith("test-")
        assert labels[LABEL_RUNTIME] == host["Runtime"] == "runc"
        inside = sandbox.run(
            "import os\n"
            "print(os.getuid(), os.getgid())\n"
            "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
            "print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])\n"
            "print(open('/proc/self/oom_score_adj').read().strip())\n"
            "print(open('/proc/1/oom_score_adj').read().strip())\n"
        ).stdout.split("\n")
        assert inside[:5] == ["1000 1000", "0000000000000000", "1", "1000", "0"]
    finally:
        runtime.stop(sandbox.id)


def test_code_in_the_sandbox_cannot_write_into_the_host_channel_directory(
    runtime: DockerSandboxRuntime,
) -> None:
    sandbox = create_sandbox(runtime)
    try:
        info = docker.APIClient(version="auto").inspect_container(sandbox.id)
        channel = Path(info["Config"]["Labels"][LABEL_CHANNEL])
        writes = sandbox.run("open('/run/sandboxd/fill', 'w').write('x' * 1024)")
        unlinks = sandbox.run("import os; os.unlink('/run/sandboxd/agent.sock')")
        lists = sandbox.run("import os; print(os.listdir('/run/sandboxd'))")
        assert "PermissionError" in writes.stderr and writes.exit_code != 0
        assert "PermissionError" in unlinks.stderr and unlinks.exit_code != 0
        assert "PermissionError" in lists.stderr and lists.exit_code != 0
        assert sorted(p.name for p in channel.iterdir()) == ["agent.sock"]
        assert sandbox.run("print(1)").stdout == "1\n"  # the agent still answers
    finally:
        runtime.stop(sandbox.id)


def test_a_second_runtime_instance_reconnects_to_existing_sandboxes(
    runtime: DockerSandboxRuntime,
) -> None:
    """As a restarted service (or the next CLI call) would: found by labels, no shared memory."""
    sandbox = create_sandbox(runtime)
    config = runtime._config
    other = DockerSandboxRuntime(docker_client(), config, ServiceLogger("test-other"))
    try:
        sandbox.run("shared_with_the_next_process = 7")
        # Both keep their connection open; the agent hands the idle one over, and each side's
        # next call reconnects without running anything twice.
        for turn in range(3):
            result = other.execute(
                sandbox.id, ExecutionRequest("shared_with_the_next_process += 1; print('other')")
            )
            assert result.stdout == "other\n", turn
            assert sandbox.run("print(shared_with_the_next_process)").stdout == f"{8 + turn}\n"
    finally:
        other.close()
        runtime.stop(sandbox.id)


def test_killed_container_is_gone_for_execute(runtime: DockerSandboxRuntime) -> None:
    sandbox = create_sandbox(runtime)
    try:
        subprocess.run(["docker", "kill", sandbox.id], check=True, capture_output=True)
        with pytest.raises(SandboxGoneError):
            sandbox.run("print(1)")
        assert not runtime.is_alive(sandbox.id)
        managed = {item.container_id: item for item in runtime.list_managed()}
        assert managed[sandbox.id].running is False
    finally:
        runtime.stop(sandbox.id)
    assert sandbox.id not in {item.container_id for item in runtime.list_managed()}


def test_list_managed_only_sees_its_own_instance(runtime: DockerSandboxRuntime) -> None:
    with docker_runtime() as other:
        theirs = create_sandbox(other)
        ours = create_sandbox(runtime)
        try:
            mine = {item.container_id for item in runtime.list_managed()}
            assert ours.id in mine and theirs.id not in mine
        finally:
            runtime.stop(ours.id)
            other.stop(theirs.id)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    made = short_temp_dir("sbxt-")
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def test_missing_image_is_runtime_unavailable_and_leaves_nothing(data_dir: Path) -> None:
    instance_id = f"test-{uuid4().hex[:12]}"
    config = DockerSandboxConfig(
        image="sandboxd-sandbox:does-not-exist", instance_id=instance_id, data_dir=data_dir
    )
    runtime = DockerSandboxRuntime(docker_client(), config, ServiceLogger("test"))
    try:
        with pytest.raises(RuntimeUnavailableError, match="image build"):
            create_sandbox(runtime)
        assert runtime.list_managed() == []
        assert list((data_dir / "sandboxes").iterdir()) == []
    finally:
        runtime.close()


def test_image_without_a_working_agent_fails_fast_and_leaves_nothing() -> None:
    with docker_runtime(agent_command=("python3", "/nonexistent.py")) as runtime:
        with pytest.raises(RuntimeUnavailableError, match="exited at start"):
            create_sandbox(runtime)
        assert runtime.list_managed() == []


def test_unreachable_engine_is_runtime_unavailable(data_dir: Path) -> None:
    config = DockerSandboxConfig(image="x", instance_id="test-none", data_dir=data_dir)
    runtime = DockerSandboxRuntime(
        docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41"),
        config,
        ServiceLogger("test"),
    )
    with pytest.raises(RuntimeUnavailableError):
        runtime.list_managed()
    with pytest.raises(RuntimeUnavailableError):
        runtime.is_alive("abc")


@pytest.mark.gvisor
def test_runtime_runsc_runs_user_code_under_gvisor() -> None:
    """SANDBOXD_DOCKER_RUNTIME=runsc: the container's OCI runtime, and the kernel user code sees
    is gVisor's (its own uname release, not the host's)."""
    with docker_runsc_runtime() as runtime:
        sandbox = create_sandbox(runtime)
        info = docker.APIClient(version="auto").inspect_container(sandbox.id)
        assert info["HostConfig"]["Runtime"] == "runsc"
        # Room in the pids cgroup for the Sentry; user code capped inside gVisor instead.
        assert info["HostConfig"]["PidsLimit"] == 128 * 16
        assert info["Config"]["Cmd"][-2:] == ["--max-processes", "64"]
        assert info["Config"]["Labels"][LABEL_RUNTIME] == "runsc"
        inside = sandbox.run("import os; print(os.uname().release)")
        assert inside.exit_code == 0, inside.stderr
        assert inside.stdout.strip() != os.uname().release
        dmesg = sandbox.run("dmesg 2>&1 | head -n 1", Language.SHELL).stdout
        assert "gVisor" in dmesg, dmesg


def test_an_unregistered_oci_runtime_is_refused_up_front(data_dir: Path) -> None:
    config = DockerSandboxConfig(
        image="x", instance_id="test-none", data_dir=data_dir, runtime="no-such-runtime"
    )
    with pytest.raises(RuntimeUnavailableError, match="no OCI runtime 'no-such-runtime'"):
        DockerSandboxRuntime.from_base_url("", config, ServiceLogger("test"))


def test_the_service_refuses_to_start_without_its_oci_runtime(data_dir: Path) -> None:
    environment = {
        **os.environ,
        "SANDBOXD_INSECURE_DEV": "true",
        "SANDBOXD_DATA_DIR": str(data_dir),
        "SANDBOXD_DOCKER_IMAGE": "sandboxd-sandbox:unused",
        "SANDBOXD_DOCKER_RUNTIME": "no-such-runtime",
        "SANDBOXD_HTTP_PORT": "0",
        "SANDBOXD_GRPC_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "entrypoint.cli", "serve"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "cannot start" in done.stderr and "no OCI runtime 'no-such-runtime'" in done.stderr


def test_listing_prunes_channel_directories_no_container_uses(
    runtime: DockerSandboxRuntime,
) -> None:
    sandbox = create_sandbox(runtime)
    channels = runtime._config.data_dir / "sandboxes"
    stale = channels / uuid4().hex
    fresh = channels / uuid4().hex
    stale.mkdir()
    fresh.mkdir()
    long_ago = time.time() - 3600
    live = channels / sandbox.session.session_id.hex
    for path in (stale, live):
        os.utime(path, (long_ago, long_ago))
    try:
        runtime.list_managed()
        assert not stale.exists()
        assert fresh.exists()  # may belong to a container being created right now
        assert live.exists()
        assert sandbox.run("print('still reachable')").stdout == "still reachable\n"
    finally:
        runtime.stop(sandbox.id)
        shutil.rmtree(fresh, ignore_errors=True)
    assert not live.exists()
