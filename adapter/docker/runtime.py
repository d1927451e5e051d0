"""DockerSandboxRuntime: one hardened container per chat, code runs through its guest agent.

Who runs as what, and the channel's permissions: adapter/docker/container_spec.py. The work is
split: DockerContainers (adapter/docker/containers.py) creates, lists and removes containers and
their channel directories; DockerAgents (adapter/docker/agents.py) holds the agent connections.

Channel: a per-sandbox host directory (``<data_dir>/sandboxes/<session hex>``) is bind-mounted at
/run/sandboxd, the agent listens on a Unix socket there. That bind mount is the only host path
the container sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import docker

from adapter.agent.client import AgentClient
from adapter.docker import fast_stop
from adapter.docker.agents import DockerAgents
from adapter.docker.container_spec import DockerSandboxConfig, make_channel, seal_channel
from adapter.docker.containers import (
    LABEL_CHANNEL,
    LABEL_CHAT,
    LABEL_INSTANCE,
    LABEL_RUNTIME,
    LABEL_SESSION,
    DockerContainers,
    connect_engine,
)
from domain.execution import ExecutionRequest, ExecutionResult
from domain.sandbox import ManagedSandbox, SandboxSession, SandboxStatus
from usecase.ports import Logger, OutputSink

__all__ = [
    "LABEL_CHANNEL",
    "LABEL_CHAT",
    "LABEL_INSTANCE",
    "LABEL_RUNTIME",
    "LABEL_SESSION",
    "DockerSandboxConfig",
    "DockerSandboxRuntime",
]
T = TypeVar("T")


class DockerSandboxRuntime:
    """SandboxRuntime port on a Docker engine (docker SDK, low-level API for fewer round trips)."""

    kind = "docker"

    def __init__(self, client: docker.APIClient, config: DockerSandboxConfig, logger: Logger):
        self._config = config
        self._logger = logger
        self._containers = DockerContainers(client, config, logger)
        self._agents = DockerAgents(self._containers, config.max_output_bytes)
        # gVisor's sandbox is not what the engine reports as the container's processes.
        self._host_killer = fast_stop.HostKiller(enabled=config.runtime == "runc")

    @classmethod
    def from_base_url(
        cls, base_url: str, config: DockerSandboxConfig, logger: Logger
    ) -> DockerSandboxRuntime:
        """Client for ``base_url`` (empty: DOCKER_HOST or the local socket), API version probed.

        Refuses (RuntimeUnavailableError) when the engine does not know ``config.runtime``: the
        service must not start and then fail every create.
        """
        return cls(connect_engine(base_url, config.runtime), config, logger)

    def create(
        self,
        *,
        session_id: UUID,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
        image: str | None = None,
    ) -> SandboxSession:
        """``image``: an environment's image (adapter.environment) instead of the configured one."""
        started = time.monotonic()
        channel = make_channel(self._containers.channels_root, session_id.hex)
        container_id = ""
        try:
            container_id = self._containers.start(
                session_id, chat_id, image or self._config.image, channel
            )
            agent = self._agents.wait_ready(container_id, channel, self._config.start_timeout_s)
            seal_channel(channel)
        except BaseException:
            self._containers.discard(container_id, channel)
            raise
        self._agents.adopt(container_id, agent)
        self._logger.info(
            "docker_sandbox_started",
            {
                "container_id": container_id,
                "session_id": str(session_id),
                "chat_id": str(chat_id),
                "start_s": round(time.monotonic() - started, 4),
            },
        )
        return SandboxSession(
            session_id=session_id,
            chat_id=chat_id,
            container_id=container_id,
            status=SandboxStatus.RUNNING,
            created_at=created_at,
            expires_at=expires_at,
            runtime_kind=self.kind,
        )

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        return self._agents.execute(container_id, request, on_output)

    def with_agent(self, container_id: str, action: Callable[[AgentClient], T]) -> T:
        """Lend the sandbox's agent connection (files); dropped when the agent is gone."""
        return self._agents.with_agent(container_id, action)

    def stop(self, container_id: str) -> None:
        self._agents.drop(container_id)
        self._containers.remove(container_id)

    def kill(self, container_id: str) -> None:
        """SandboxKiller: SIGKILL the container's processes from the host (adapter/docker/
        fast_stop.py) and remove the exited container in the background; where that cannot be
        done safely (gVisor, an unknown cgroup layout), the engine stops and removes it now.

        Once the cgroup layout is known the container's cgroup comes from its id, without an
        inspect: at 200 expired sandboxes the inspects were a third of the sweep's thread time."""
        self._agents.drop(container_id)
        if self._host_killer.kill_by_id(container_id):
            self._containers.remove_later(container_id)
            return
        info = self._containers.inspect(container_id)
        if info is None:
            return
        if self._host_killer.kill_inspected(info):
            self._containers.remove_later(container_id)
        else:
            self._containers.remove(container_id)

    def is_alive(self, container_id: str) -> bool:
        return self._containers.is_running(container_id)

    def ping(self, container_id: str, timeout_s: float) -> bool:
        """SandboxHealthProbe: True when the agent answers within ``timeout_s``.

        A SIGSTOPped container is still "running" to Docker; only its agent's silence shows it.
        """
        return self._agents.ping(container_id, timeout_s)

    def list_managed(self) -> list[ManagedSandbox]:
        """This instance's containers; also prunes channel directories no container uses."""
        return self._containers.list_managed()

    def channel_dir(self, container_id: str) -> Path | None:
        """The host side of the container's agent channel (mounted at AGENT_SOCKET_DIR, read-only
        for the sandbox user once sealed): where the host hands files in, e.g. wheels."""
        info = self._containers.inspect(container_id)
        if info is None or not info["State"].get("Running"):
            return None
        return self._containers.channel_of(info)

    def close_agent(self, container_id: str) -> None:
        """Close the pooled connection to one sandbox (it keeps running; the next call reconnects).

        The agent serves one host connection at a time: a process that hands a sandbox over to
        another process (or a test) closes its connection first.
        """
        self._agents.drop(container_id)

    def close(self) -> None:
        """Close the pooled agent connections (the sandboxes keep running)."""
        self._agents.close()
        self._containers.close()
