"""DockerAgents: the host's connections to the agents inside the Docker sandboxes.

The agent listens on a Unix socket in the container's channel directory (bind-mounted at
/run/sandboxd). One connection per container is kept open and reconnected on demand (e.g. in a
new process, found through the container's channel label); executing costs one round trip on it:
no ``docker exec``, no process start.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from adapter.agent.client import DEFAULT_MARGIN_S, AgentClient, AgentUnansweredError
from adapter.docker.container_spec import SOCKET_NAME
from adapter.docker.containers import DockerContainers
from domain.errors import RuntimeUnavailableError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult
from usecase.ports import OutputSink

T = TypeVar("T")

# sun_path holds 108 bytes; longer socket paths are reached through /proc/self/fd/<dir fd>.
_MAX_SOCKET_PATH = 100
# Sends of one request over fresh connections when the agent closed them unanswered.
_SEND_ATTEMPTS = 3


class DockerAgents:
    """One pooled agent connection per container (see the module docstring)."""

    def __init__(self, containers: DockerContainers, max_output_bytes: int) -> None:
        self._containers = containers
        self._max_output_bytes = max_output_bytes
        self._agents: dict[str, AgentClient] = {}
        self._lock = threading.Lock()

    def wait_ready(self, container_id: str, channel: Path, timeout_s: float) -> AgentClient:
        """A connection to a new container's agent, once it answers a ping (pool it with
        ``adopt``)."""
        deadline = time.monotonic() + timeout_s
        next_state_check = time.monotonic() + 0.5
        while True:
            agent = _answering_agent(channel)
            if agent is not None:
                return agent
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeUnavailableError(
                    f"the sandbox agent did not answer within {timeout_s:g} s; "
                    f"container log: {self._containers.log_tail(container_id)}"
                )
            if now >= next_state_check:
                next_state_check = now + 0.5
                if not self._containers.is_running(container_id):
                    log_tail = self._containers.log_tail(container_id)
                    raise RuntimeUnavailableError(
                        f"the sandbox container exited at start; log: {log_tail}"
                    )
            time.sleep(0.002)

    def adopt(self, container_id: str, agent: AgentClient) -> None:
        with self._lock:
            self._agents[container_id] = agent

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None
    ) -> ExecutionResult:
        for attempt in range(_SEND_ATTEMPTS):
            agent = self._agent_for(container_id)
            try:
                return agent.execute(request, self._max_output_bytes, on_output)
            except AgentUnansweredError:
                # The connection was handed over to another process while idle (or the agent
                # is gone, and reconnecting says so): the request never ran, send it again.
                self.drop(container_id, agent)
                if attempt + 1 == _SEND_ATTEMPTS:
                    raise
            except SandboxGoneError:
                self.drop(container_id, agent)
                raise
        raise AssertionError("unreachable")

    def with_agent(self, container_id: str, action: Callable[[AgentClient], T]) -> T:
        agent = self._agent_for(container_id)
        try:
            return action(agent)
        except SandboxGoneError:
            self.drop(container_id, agent)
            raise

    def ping(self, container_id: str, timeout_s: float) -> bool:
        try:
            self._agent_for(container_id).ping(timeout_s)
        except (SandboxGoneError, RuntimeUnavailableError):
            # A call that timed out leaves the connection mid-frame: never reuse it.
            self.drop(container_id)
            return False
        return True

    def drop(self, container_id: str, agent: AgentClient | None = None) -> None:
        """Forget and close the pooled connection (only ``agent`` if given: not a newer one)."""
        with self._lock:
            current = self._agents.get(container_id)
            if current is not None and (agent is None or current is agent):
                del self._agents[container_id]
                current.close()
        if agent is not None:
            agent.close()

    def close(self) -> None:
        with self._lock:
            agents, self._agents = list(self._agents.values()), {}
        for agent in agents:
            agent.close()

    def _agent_for(self, container_id: str) -> AgentClient:
        with self._lock:
            agent = self._agents.get(container_id)
        if agent is not None and not agent.closed:
            return agent
        info = self._containers.inspect(container_id)
        if info is None or not info["State"].get("Running"):
            raise SandboxGoneError(f"container {container_id[:12]} is gone or not running")
        channel = self._containers.channel_of(info)
        if channel is None:
            raise SandboxGoneError(f"container {container_id[:12]} has no agent channel of ours")
        try:
            agent = _connect(channel)
        except OSError as exc:
            raise SandboxGoneError(f"cannot reach the agent of {container_id[:12]}: {exc}") from exc
        with self._lock:
            self._agents[container_id] = agent
        return agent


def _answering_agent(channel: Path) -> AgentClient | None:
    """A connection to the agent in ``channel`` once it answers a ping; None while it does not."""
    if not (channel / SOCKET_NAME).exists():
        return None
    try:
        agent = _connect(channel)
    except OSError:
        return None
    try:
        agent.ping()
    except SandboxGoneError:
        agent.close()
        return None
    return agent


def _connect(channel: Path) -> AgentClient:
    path = channel / SOCKET_NAME
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return AgentClient.connect_unix(str(path), margin_s=DEFAULT_MARGIN_S)
    fd = os.open(channel, os.O_PATH | os.O_DIRECTORY)
    try:
        return AgentClient.connect_unix(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
    finally:
        os.close(fd)
