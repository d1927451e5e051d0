"""A Docker engine owned by one test session, to stop and restart at will.

The system's dockerd is shared by every test run on the machine: a fault test must never stop
it. This one runs from a short temporary directory (its socket, data root, exec root, pidfile
and its own managed containerd all under it), with no bridge and no iptables rules, so it
touches nothing of the host's network, and an empty configuration file (not the host's
/etc/docker/daemon.json). Stopping it (SIGTERM) stops its containers, as a dockerd restart
without live-restore does. ``close`` stops it and removes its directory, unmounting whatever
is still mounted under it; only its own pids are ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

import docker

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


class PrivateDockerd:
    def __init__(self) -> None:
        # Short: the Unix socket paths under it must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="sbxd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.config = self.root / "daemon.json"
        self.config.write_text("{}\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.bridge = self.root.name  # "sbxd-" + 8 characters: within the 15 of an interface name

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> closing[docker.DockerClient]:
        """``with engine.client() as client``: a client of this engine, closed after."""
        return closing(docker.DockerClient(base_url=self.base_url, version="auto", timeout=60))

    def start(self) -> None:
        self.starts += 1
        if not Path("/sys/class/net", self.bridge).exists():
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        with (self.root / f"dockerd-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    f"--config-file={self.config}",
                    f"--host={self.base_url}",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--pidfile={self.root / 'docker.pid'}",
                    # Its own bridge: --bridge=none would make it delete the host's docker0
                    # (dockerd removes the default bridge interface when bridging is off), and
                    # the system engine's containers on the default network could not start.
                    f"--bridge={self.bridge}",
                    "--iptables=false",
                    "--ip6tables=false",
                    "--ip-masq=false",
                    # Its containers' cgroups apart from the system engine's.
                    f"--cgroup-parent=/{self.root.name}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private dockerd exited early:\n{self.log_tail()}")
            try:
                with self.client() as client:
                    client.ping()
                return
            except docker.errors.DockerException:
                time.sleep(0.1)
        raise RuntimeError(f"private dockerd did not answer:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, as a service manager's restart does: the engine stops its containers."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def load_image(self, tag: str) -> None:
        """Copy an image from the system engine (``docker save | docker load``)."""
        env = {**os.environ, "DOCKER_HOST": self.base_url}
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        assert save.stdout is not None
        try:
            subprocess.run(
                ["docker", "load", "--quiet"],
                stdin=save.stdout,
                env=env,
                check=True,
                capture_output=True,
            )
        finally:
            save.stdout.close()
            if save.wait(timeout=120) != 0:
                raise RuntimeError(f"docker save {tag} failed")

    def log_tail(self, lines: int = 30) -> str:
        log = self.root / f"dockerd-{self.starts}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                with suppress(docker.errors.DockerException), self.client() as client:
                    for container in client.containers.list(all=True):
                        with suppress(docker.errors.DockerException):
                            container.remove(force=True)
        finally:
            self.stop()
        # A dockerd that died hard leaves its containerd (and shims) running: ours by pidfile.
        for pidfile in (self.root / "exec" / "containerd").glob("*.pid"):
            with suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        for mountpoint in _mounts_under(self.root):
            subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        # rm is about twice as fast as shutil.rmtree on an image's many small files.
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)
        # The (empty) cgroups of --cgroup-parent, in every hierarchy; rmdir removes only empty
        # ones, so nothing still running is touched.
        for parent in Path("/sys/fs/cgroup").glob(f"*/{self.root.name}"):
            for directory in sorted(parent.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if directory.is_dir():
                    with suppress(OSError):
                        directory.rmdir()
            with suppress(OSError):
                parent.rmdir()
        if Path("/sys/fs/cgroup", self.root.name).is_dir():  # cgroup v2
            with suppress(OSError):
                Path("/sys/fs/cgroup", self.root.name).rmdir()
        subprocess.run(["ip", "link", "delete", self.bridge], check=False, capture_output=True)


def _mounts_under(root: Path) -> list[str]:
    """Mount points below ``root``, deepest first."""
    prefix = str(root) + "/"
    points = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            point = line.split()[1].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


@contextmanager
def private_dockerd(images: tuple[str, ...] = ()) -> Iterator[PrivateDockerd]:
    host_interfaces = set(os.listdir("/sys/class/net"))
    engine = PrivateDockerd()
    try:
        engine.start()
        for tag in images:
            engine.load_image(tag)
        yield engine
    finally:
        engine.close()
    # The system engine's docker0 once vanished this way, and every later container on the
    # default network failed to start: the private engine must leave the host's network alone.
    lost = host_interfaces - set(os.listdir("/sys/class/net"))
    assert not lost, f"the private dockerd removed host network interfaces: {sorted(lost)}"
