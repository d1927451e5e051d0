"""DockerSandboxRuntime: one hardened container per chat, code runs through its guest agent.

Who runs as what, and the channel's permissions: adapter/docker/container_spec.py.

Channel: a per-sandbox host directory (``<data_dir>/sandboxes/<session hex>``) is bind-mounted at
/run/sandboxd, the agent listens on a Unix socket there, and the runtime keeps one connection per
container open (reconnecting on demand, e.g. in a new process). That bind mount is the only host
path the container sees. Executing costs one round trip on that socket: no ``docker exec``, no
process start.

Labels on every container: ``sandboxd.session_id``, ``sandboxd.chat_id``, ``sandboxd.instance``
(the service instance; ``list_managed`` filters on it) and ``sandboxd.channel`` (the channel
directory, so any process of the service can reconnect after a restart) and ``sandboxd.runtime``
(the OCI runtime: runc, or runsc for gVisor).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import docker
import docker.utils
import requests
from docker.errors import DockerException, ImageNotFound, NotFound

from adapter.agent.client import DEFAULT_MARGIN_S, AgentClient, AgentUnansweredError
from adapter.docker.container_spec import (
    AGENT_USER,
    SOCKET_NAME,
    DockerSandboxConfig,
    agent_command,
    host_config,
    make_channel,
    seal_channel,
)
from domain.errors import RuntimeUnavailableError, SandboxGoneError
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

LABEL_SESSION = "sandboxd.session_id"
LABEL_CHAT = "sandboxd.chat_id"
LABEL_INSTANCE = "sandboxd.instance"
LABEL_CHANNEL = "sandboxd.channel"
LABEL_RUNTIME = "sandboxd.runtime"
# sun_path holds 108 bytes; longer socket paths are reached through /proc/self/fd/<dir fd>.
_MAX_SOCKET_PATH = 100
# Sends of one request over fresh connections when the agent closed them unanswered.
_SEND_ATTEMPTS = 3
_POOL_SIZE = 32


@contextmanager
def _engine(action: str) -> Iterator[None]:
    try:
        yield
    except (DockerException, requests.RequestException) as exc:
        raise RuntimeUnavailableError(f"Docker engine: {action}: {exc}") from exc


class DockerSandboxRuntime:
    """SandboxRuntime port on a Docker engine (docker SDK, low-level API for fewer round trips)."""

    kind = "docker"

    def __init__(self, client: docker.APIClient, config: DockerSandboxConfig, logger: Logger):
        self._api = client
        self._config = config
        self._logger = logger
        self._channels = (config.data_dir / "sandboxes").resolve()
        self._agents: dict[str, AgentClient] = {}
        self._agents_lock = threading.Lock()

    @classmethod
    def from_base_url(
        cls, base_url: str, config: DockerSandboxConfig, logger: Logger
    ) -> DockerSandboxRuntime:
        """Client for ``base_url`` (empty: DOCKER_HOST or the local socket), API version probed.

        Refuses (RuntimeUnavailableError) when the engine does not know ``config.runtime``: the
        service must not start and then fail every create.
        """
        # More pooled engine connections than the SDK's 10: the sweep stops 16 sandboxes at
        # once, next to the executions (a full pool drops and reopens connections).
        with _engine("connect"):
            if base_url:
                client = docker.APIClient(
                    base_url=base_url, version="auto", timeout=60, max_pool_size=_POOL_SIZE
                )
            else:
                client = docker.APIClient(
                    version="auto",
                    timeout=60,
                    max_pool_size=_POOL_SIZE,
                    **docker.utils.kwargs_from_env(),
                )
            registered = client.info().get("Runtimes") or {}
        if config.runtime not in registered:
            client.close()
            known = ", ".join(sorted(registered)) or "none"
            how = (
                "`scripts/setup.sh gvisor` installs runsc and registers it with dockerd"
                if config.runtime == "runsc"
                else "register it in /etc/docker/daemon.json"
            )
            raise RuntimeUnavailableError(
                f"the Docker engine has no OCI runtime {config.runtime!r} "
                f"(SANDBOXD_DOCKER_RUNTIME; registered: {known}); {how}"
            )
        return cls(client, config, logger)

    # --- create ---------------------------------------------------------------------------

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
        image = image or self._config.image
        channel = make_channel(self._channels, session_id.hex)
        container_id = ""
        try:
            with _engine("create container"):
                try:
                    container_id = self._api.create_container(
                        image,
                        command=agent_command(self._config),
                        user=AGENT_USER,
                        working_dir="/workspace",
                        hostname="sandbox",
                        labels={
                            LABEL_SESSION: str(session_id),
                            LABEL_CHAT: str(chat_id),
                            LABEL_INSTANCE: self._config.instance_id,
                            LABEL_CHANNEL: str(channel),
                            LABEL_RUNTIME: self._config.runtime,
                        },
                        network_disabled=self._config.network == "none",
                        host_config=host_config(self._api, self._config, channel),
                        name=f"sandboxd-{session_id}",
                    )["Id"]
                except ImageNotFound as exc:
                    raise RuntimeUnavailableError(
                        f"sandbox image {image} is not in the Docker engine; "
                        "run `sandboxd image build`"
                    ) from exc
                self._api.start(container_id)
            agent = self._wait_for_agent(container_id, channel)
            seal_channel(channel)
        except BaseException:
            self._discard(container_id, channel)
            raise
        with self._agents_lock:
            self._agents[container_id] = agent
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

    def _wait_for_agent(self, container_id: str, channel: Path) -> AgentClient:
        deadline = time.monotonic() + self._config.start_timeout_s
        next_state_check = time.monotonic() + 0.5
        while True:
            if (channel / SOCKET_NAME).exists():
                try:
                    agent = _connect(channel)
                except OSError:
                    pass
                else:
                    try:
                        agent.ping()
                    except SandboxGoneError:
                        agent.close()
                    else:
                        return agent
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeUnavailableError(
                    f"the sandbox agent did not answer within {self._config.start_timeout_s:g} s; "
                    f"container log: {self._log_tail(container_id)}"
                )
            if now >= next_state_check:
                next_state_check = now + 0.5
                if not self.is_alive(container_id):
                    log_tail = self._log_tail(container_id)
                    raise RuntimeUnavailableError(
                        f"the sandbox container exited at start; log: {log_tail}"
                    )
            time.sleep(0.002)

    def _log_tail(self, container_id: str) -> str:
        try:
            logs = self._api.logs(container_id, tail=10)
        except (DockerException, requests.RequestException):
            return "(unavailable)"
        return logs.decode(errors="replace").strip() if isinstance(logs, bytes) else str(logs)

    # --- execute ----------------------------------------------------------------------------

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        for attempt in range(_SEND_ATTEMPTS):
            agent = self._agent_for(container_id)
            try:
                return agent.execute(request, self._config.max_output_bytes, on_output)
            except AgentUnansweredError:
                # The connection was handed over to another process while idle (or the agent
                # is gone, and reconnecting says so): the request never ran, send it again.
                self._drop_agent(container_id, agent)
                if attempt + 1 == _SEND_ATTEMPTS:
                    raise
            except SandboxGoneError:
                self._drop_agent(container_id, agent)
                raise
        raise AssertionError("unreachable")

    def with_agent(self, container_id: str, action: Callable[[AgentClient], T]) -> T:
        """Lend the sandbox's agent connection (files); dropped when the agent is gone."""
        agent = self._agent_for(container_id)
        try:
            return action(agent)
        except SandboxGoneError:
            self._drop_agent(container_id, agent)
            raise

    def _agent_for(self, container_id: str) -> AgentClient:
        with self._agents_lock:
            agent = self._agents.get(container_id)
        if agent is not None and not agent.closed:
            return agent
        info = self._inspect(container_id)
        if info is None or not info["State"].get("Running"):
            raise SandboxGoneError(f"container {container_id[:12]} is gone or not running")
        channel = self._channel_of(info)
        if channel is None:
            raise SandboxGoneError(f"container {container_id[:12]} has no agent channel of ours")
        try:
            agent = _connect(channel)
        except OSError as exc:
            raise SandboxGoneError(f"cannot reach the agent of {container_id[:12]}: {exc}") from exc
        with self._agents_lock:
            self._agents[container_id] = agent
        return agent

    def _drop_agent(self, container_id: str, agent: AgentClient | None = None) -> None:
        """Forget and close the pooled connection (only ``agent`` if given: not a newer one)."""
        with self._agents_lock:
            current = self._agents.get(container_id)
            if current is not None and (agent is None or current is agent):
                del self._agents[container_id]
                current.close()
        if agent is not None:
            agent.close()

    # --- stop, is_alive, list -----------------------------------------------------------------

    def stop(self, container_id: str) -> None:
        self._drop_agent(container_id)
        info = self._inspect(container_id)
        if info is None:
            return
        with _engine("remove container"):
            try:
                self._api.remove_container(container_id, force=True, v=True)
            except NotFound:
                pass
            except docker.errors.APIError as exc:
                # Another caller's removal of the same container is already under way.
                if exc.status_code != 409:
                    raise
        channel = self._channel_of(info)
        if channel is not None:
            shutil.rmtree(channel, ignore_errors=True)
        self._logger.info("docker_sandbox_removed", {"container_id": container_id})

    def is_alive(self, container_id: str) -> bool:
        info = self._inspect(container_id)
        return info is not None and bool(info["State"].get("Running"))

    def ping(self, container_id: str, timeout_s: float) -> bool:
        """SandboxHealthProbe: True when the agent answers within ``timeout_s``.

        A SIGSTOPped container is still "running" to Docker; only its agent's silence shows it.
        """
        try:
            self._agent_for(container_id).ping(timeout_s)
        except (SandboxGoneError, RuntimeUnavailableError):
            # A call that timed out leaves the connection mid-frame: never reuse it.
            self._drop_agent(container_id)
            return False
        return True

    def list_managed(self) -> list[ManagedSandbox]:
        """This instance's containers; also prunes channel directories no container uses.

        Reconciliation calls this at start and on every sweep, which makes it the place where
        directories of containers removed behind our back (``docker rm``) go away too.
        """
        with _engine("list containers"):
            containers = self._api.containers(
                all=True, filters={"label": f"{LABEL_INSTANCE}={self._config.instance_id}"}
            )
        self._prune_channels()
        return [
            ManagedSandbox(
                container_id=item["Id"],
                session_id=_uuid_or_none((item.get("Labels") or {}).get(LABEL_SESSION)),
                chat_id=_uuid_or_none((item.get("Labels") or {}).get(LABEL_CHAT)),
                running=item.get("State") == "running",
            )
            for item in containers
        ]

    def _prune_channels(self, min_age_s: float = 300.0) -> None:
        """Remove channel directories that no container (of any instance) refers to.

        Only directories older than ``min_age_s``: one being set up for a container that is
        about to be created must stay.
        """
        if not self._channels.is_dir():
            return
        with _engine("list containers"):
            everyone = self._api.containers(all=True, filters={"label": LABEL_CHANNEL})
        in_use = {(item.get("Labels") or {}).get(LABEL_CHANNEL) for item in everyone}
        now = time.time()
        for channel in self._channels.iterdir():
            try:
                old_enough = now - channel.stat().st_mtime > min_age_s
            except OSError:
                continue
            if str(channel) not in in_use and old_enough:
                shutil.rmtree(channel, ignore_errors=True)
                self._logger.info("docker_channel_pruned", {"channel": str(channel)})

    def channel_dir(self, container_id: str) -> Path | None:
        """The host side of the container's agent channel (mounted at AGENT_SOCKET_DIR, read-only
        for the sandbox user once sealed): where the host hands files in, e.g. wheels."""
        info = self._inspect(container_id)
        if info is None or not info["State"].get("Running"):
            return None
        return self._channel_of(info)

    def close_agent(self, container_id: str) -> None:
        """Close the pooled connection to one sandbox (it keeps running; the next call reconnects).

        The agent serves one host connection at a time: a process that hands a sandbox over to
        another process (or a test) closes its connection first.
        """
        self._drop_agent(container_id)

    def close(self) -> None:
        """Close the pooled agent connections (the sandboxes keep running)."""
        with self._agents_lock:
            agents, self._agents = list(self._agents.values()), {}
        for agent in agents:
            agent.close()
        self._api.close()

    # --- helpers ------------------------------------------------------------------------------

    def _inspect(self, container_id: str) -> dict[str, Any] | None:
        if not container_id:
            return None
        with _engine("inspect container"):
            try:
                return self._api.inspect_container(container_id)  # type: ignore[no-any-return]
            except NotFound:
                return None

    def _channel_of(self, info: dict[str, Any]) -> Path | None:
        """The container's channel directory, only if it lies under our own channels root."""
        label = (info.get("Config", {}).get("Labels") or {}).get(LABEL_CHANNEL)
        if not label:
            return None
        channel = Path(label)
        return channel if channel.parent == self._channels else None

    def _discard(self, container_id: str, channel: Path) -> None:
        """Undo a failed create; must not raise over the original error."""
        if container_id:
            try:
                self._api.remove_container(container_id, force=True, v=True)
            except (DockerException, requests.RequestException) as exc:
                self._logger.error(
                    "docker_sandbox_discard_failed",
                    {"container_id": container_id, "error": type(exc).__name__},
                )
        shutil.rmtree(channel, ignore_errors=True)


def _connect(channel: Path) -> AgentClient:
    path = channel / SOCKET_NAME
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return AgentClient.connect_unix(str(path), margin_s=DEFAULT_MARGIN_S)
    fd = os.open(channel, os.O_PATH | os.O_DIRECTORY)
    try:
        return AgentClient.connect_unix(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
    finally:
        os.close(fd)


def _uuid_or_none(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None
