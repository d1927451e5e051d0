"""The real ``sandboxd serve`` process for end-to-end tests: free loopback ports, its own instance
id and data directory, either runtime; stopped with SIGTERM, and its sandboxes removed by the
instance label (containers) or by the pidfiles in its own VM work dirs (microVMs)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import httpx
from sandboxd_client import SandboxdClient

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "e2e-" + uuid.uuid4().hex
INSTANCE_LABEL = "sandboxd.instance"
# The first start may have to build the sandbox image (debootstrap, about a minute).
START_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """One service process; ``restart()`` keeps the data directory, instance id and ports."""

    def __init__(
        self,
        data_dir: Path,
        runtime: str = "docker",
        qemu_image_dir: Path | None = None,
        log_dir: Path | None = None,
        **settings: str,
    ) -> None:
        self.instance_id = f"e2e-{uuid.uuid4().hex[:12]}"
        self.data_dir = data_dir
        # Elsewhere than the data directory when a test fills that one's disk.
        self.log_dir = log_dir or data_dir
        self.runtime = runtime
        self.qemu_image_dir = qemu_image_dir
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("SANDBOXD_")}
        env.update(
            {
                "SANDBOXD_DATA_DIR": str(self.data_dir),
                "SANDBOXD_INSTANCE_ID": self.instance_id,
                "SANDBOXD_API_KEYS": API_KEY,
                "SANDBOXD_HOST": "127.0.0.1",
                "SANDBOXD_HTTP_PORT": str(self.http_port),
                "SANDBOXD_GRPC_PORT": str(self.grpc_port),
                "SANDBOXD_LOG_FORMAT": "json",
                "SANDBOXD_DRAIN_SECONDS": "10",
                "SANDBOXD_RUNTIME": self.runtime,
            }
        )
        if self.qemu_image_dir is not None:
            # The shared, already built image set: nothing to build at start-up.
            env["SANDBOXD_QEMU_IMAGE_DIR"] = str(self.qemu_image_dir)
        env.update({f"SANDBOXD_{key.upper()}": value for key, value in self.settings.items()})
        return env

    def start(self) -> None:
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._log_path().open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "entrypoint.cli", "serve"],
                cwd=ROOT,
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sandboxd serve exited early:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"sandboxd serve did not become ready:\n{self.log_tail()}")

    def stop(self) -> int:
        """Graceful stop (SIGTERM); returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL: no drain, no clean-up, as a crash or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        log = self._log_path()
        if not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def log_text(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")
            for path in sorted(self.log_dir.glob(f"service-{self.http_port}-*.log"))
        )

    def _log_path(self) -> Path:
        # Port in the name: replicas may share one data directory.
        return self.log_dir / f"service-{self.http_port}-{self.starts}.log"

    def containers(self, docker_client: docker.DockerClient) -> list[object]:
        return list(
            docker_client.containers.list(
                all=True, filters={"label": f"{INSTANCE_LABEL}={self.instance_id}"}
            )
        )

    def vm_dirs(self) -> dict[str, Path]:
        """This instance's microVM work dirs by VM id (the VM's container_id)."""
        marker = f'"instance_id": "{self.instance_id}"'
        return {
            path.name: path
            for path in (self.data_dir / "vms").glob("qvm-*")
            if marker in _read(path / "vm.json")
        }

    def kill_sandbox(self, docker_client: docker.DockerClient, container_id: str) -> None:
        """Kill one sandbox from outside, as a crash or an operator would."""
        if self.runtime == "docker":
            docker_client.containers.get(container_id).kill()
        else:
            os.kill(int((self.vm_dirs()[container_id] / "qemu.pid").read_text()), signal.SIGKILL)

    def remove_sandboxes(self, docker_client: docker.DockerClient | None = None) -> None:
        if self.runtime == "docker":
            for container in self.containers(docker_client or docker.from_env()):
                container.remove(force=True)  # type: ignore[attr-defined]
            return
        for work_dir in self.vm_dirs().values():
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((work_dir / "qemu.pid").read_text()), signal.SIGKILL)
            shutil.rmtree(work_dir, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


ServiceFactory = Callable[..., ServiceProcess]


def client_for(service: ServiceProcess, api_key: str | None = API_KEY) -> SandboxdClient:
    return SandboxdClient(service.http_url, api_key=api_key, timeout_s=60)


def migrate(service: ServiceProcess) -> None:
    """``sandboxd migrate`` against the service's database, with the service's settings."""
    subprocess.run(
        [sys.executable, "-m", "entrypoint.cli", "migrate"],
        cwd=ROOT,
        env=service.environment(),
        check=True,
        capture_output=True,
    )
