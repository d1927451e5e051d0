"""What a sandbox container looks like: its settings, its engine configuration, its channel.

Who runs as what. The container starts the agent as root with every capability dropped except
SETUID and SETGID (to start the interpreters as the sandbox user), KILL (to kill whatever user
code started) and, when the service itself is not root, CHOWN (to hand its socket to the
service's user); no-new-privileges holds for everything in it. The interpreters, and so all user
code, run as ``DockerSandboxConfig.user`` (1000:1000) with no capabilities. User code therefore
cannot signal, ptrace or read the agent (another uid, and the agent is not dumpable), and cannot
open its socket (the channel directory is the service's, 0700, the socket 0600; the agent also
refuses any peer from inside the container, see the agent's PeerPolicy).

The channel: a per-sandbox host directory bind-mounted at /run/sandboxd, the container's only
host path. The agent creates its socket there; before ``create`` returns the host seals it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.types import LogConfig

from adapter.docker.image import AGENT_SOCKET_DIR
from adapter.image.rootfs import AGENT_GUEST_PATH
from domain.errors import RuntimeUnavailableError, StorageFullError

SOCKET_NAME = "agent.sock"
AGENT_USER = "0:0"
AGENT_CAPABILITIES = ("SETUID", "SETGID", "KILL")


@dataclass(frozen=True)
class DockerSandboxConfig:
    """Container settings; the defaults are the hardened ones. ``user``: user code's uid:gid."""

    image: str
    instance_id: str
    data_dir: Path
    memory_mb: int = 512
    cpus: float = 1.0
    pids_limit: int = 128
    workspace_mb: int = 256
    tmp_mb: int = 16
    user: str = "1000:1000"
    network: str = "none"
    # The OCI runtime dockerd starts the container with: runc, or runsc (gVisor), which puts a
    # user-space kernel between user code and the host's.
    runtime: str = "runc"
    read_only_root: bool = True
    drop_all_capabilities: bool = True
    no_new_privileges: bool = True
    max_output_bytes: int = 1024 * 1024
    start_timeout_s: float = 30.0
    agent_command: tuple[str, ...] = ("python3", AGENT_GUEST_PATH)

    @property
    def uid_gid(self) -> tuple[int, int]:
        uid, _, gid = self.user.partition(":")
        try:
            return int(uid), int(gid or uid)
        except ValueError as exc:
            raise ValueError(f"docker user must be numeric uid[:gid], got {self.user!r}") from exc


# gVisor (runsc, ptrace platform) runs every process of the sandbox with host threads and a host
# stub process of its own, all in the container's pids cgroup, and dies as a whole when it cannot
# create them (measured: ~25 processes at pids.max 128). So under gVisor the cgroup gets room for
# the Sentry, and the sandbox user's processes are capped inside gVisor, which enforces
# RLIMIT_NPROC (the agent's --max-processes), at half the pids limit: 128 forked interpreters
# outgrow the default 512 MB under gVisor. A fork bomb can still crash the Sentry (see the
# conformance suite's xfail).
GVISOR_HOST_PIDS_PER_PROCESS = 16


def is_gvisor(config: DockerSandboxConfig) -> bool:
    return config.runtime == "runsc"


def host_pids_limit(config: DockerSandboxConfig) -> int:
    return (
        config.pids_limit * GVISOR_HOST_PIDS_PER_PROCESS if is_gvisor(config) else config.pids_limit
    )


def agent_command(config: DockerSandboxConfig) -> list[str]:
    uid, gid = config.uid_gid
    limit = ["--max-processes", str(max(config.pids_limit // 2, 16))] if is_gvisor(config) else []
    return [
        *config.agent_command,
        "--listen",
        f"{AGENT_SOCKET_DIR}/{SOCKET_NAME}",
        "--user",
        f"{uid}:{gid}",
        *limit,
    ]


def agent_capabilities() -> list[str]:
    # A service that is not root owns the channel directory; the agent (root without
    # CAP_DAC_OVERRIDE) then needs CHOWN to give it the socket.
    return [*AGENT_CAPABILITIES, *(() if os.geteuid() == 0 else ("CHOWN",))]


def host_config(api: docker.APIClient, config: DockerSandboxConfig, channel: Path) -> Any:
    uid, gid = config.uid_gid
    return api.create_host_config(
        network_mode=config.network,
        runtime=config.runtime,
        read_only=config.read_only_root,
        tmpfs={
            # 0755: the agent (root without CAP_DAC_OVERRIDE) must be able to enter it to start
            # the interpreters there.
            "/workspace": (
                f"size={config.workspace_mb}m,uid={uid},gid={gid},mode=0755,exec,nosuid,nodev"
            ),
            # The container's own /tmp, a small tmpfs: not a host path.
            "/tmp": f"size={config.tmp_mb}m,uid={uid},gid={gid},mode=1777,nosuid,nodev",  # noqa: S108
        },
        cap_drop=["ALL"] if config.drop_all_capabilities else None,
        cap_add=agent_capabilities() if config.drop_all_capabilities else None,
        security_opt=["no-new-privileges"] if config.no_new_privileges else None,
        pids_limit=host_pids_limit(config),
        mem_limit=f"{config.memory_mb}m",
        # Same as mem_limit: no swap, so a memory bomb hits the limit instead of the disk.
        memswap_limit=f"{config.memory_mb}m",
        nano_cpus=int(config.cpus * 1e9),
        binds={str(channel): {"bind": AGENT_SOCKET_DIR, "mode": "rw"}},
        log_config=LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"}),
    )


def make_channel(channels: Path, name: str) -> Path:
    """The sandbox's channel directory, owned by the service's user.

    The agent is root in the container, so a root service's 0700 directory is writable for it
    (same uid). A service that is not root cannot hand the directory to root: it opens it to
    everyone until the seal; no user code runs before the seal (the host sends none).
    """
    channel = channels / name
    try:
        channels.mkdir(parents=True, exist_ok=True, mode=0o700)
        channel.mkdir(mode=0o700)
        if os.geteuid() != 0:
            channel.chmod(0o777)
    except OSError as exc:
        # A full data directory is the service's storage, not the engine, failing.
        kind = (
            StorageFullError
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else RuntimeUnavailableError
        )
        raise kind(f"cannot create the agent channel {channel}: {exc}") from exc
    return channel


def seal_channel(channel: Path) -> None:
    """Close the channel directory to everyone but the service once the agent's socket is in it.

    The agent keeps its listening socket for the container's life and never writes here again.
    From now on nothing in the sandbox can create files in this host directory nor list it:
    0711 leaves others only the right to pass through to a name they are told, which is how the
    host hands package wheels to the chat's interpreter (a directory with an unguessable name,
    adapter.environment.live_install). The agent's socket stays unreachable: it is 0600 and the
    agent checks its peer's credentials.
    """
    try:
        os.chown(channel, os.getuid(), os.getgid())
        channel.chmod(0o711)
    except OSError as exc:
        raise RuntimeUnavailableError(f"cannot seal the agent channel {channel}: {exc}") from exc
