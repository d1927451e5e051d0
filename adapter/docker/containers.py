"""DockerContainers: the engine side of the Docker runtime, the containers and their channels.

Creates, inspects, lists and removes the service's containers (low-level docker SDK, fewer round
trips) and owns the channel directories (``<data_dir>/sandboxes/<session hex>``) they mount. The
agent connections over those channels: adapter/docker/agents.py.

Labels on every container: ``sandboxd.session_id``, ``sandboxd.chat_id``, ``sandboxd.instance``
(the service instance; ``list_managed`` filters on it) and ``sandboxd.channel`` (the channel
directory, so any process of the service can reconnect after a restart) and ``sandboxd.runtime``
(the OCI runtime: runc, or runsc for gVisor).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import docker
import docker.utils
import requests
from docker.errors import DockerException, ImageNotFound, NotFound

from adapter.docker.container_spec import (
    AGENT_USER,
    DockerSandboxConfig,
    agent_command,
    host_config,
)
from domain.errors import RuntimeUnavailableError
from domain.sandbox import ManagedSandbox
from usecase.ports import Logger

LABEL_SESSION = "sandboxd.session_id"
LABEL_CHAT = "sandboxd.chat_id"
LABEL_INSTANCE = "sandboxd.instance"
LABEL_CHANNEL = "sandboxd.channel"
LABEL_RUNTIME = "sandboxd.runtime"
_POOL_SIZE = 32
# Background removals of killed containers at once: the engine removes exited containers fast
# (~260/s), a few workers keep up without crowding the executions' engine connections.
_REMOVERS = 8
# ...and they wait until no kill has come for _REMOVAL_QUIET_S (at most _REMOVAL_HOLD_MAX_S):
# during a sweep round they would compete with its kills for the CPU and slow the round.
_REMOVAL_QUIET_S = 0.3
_REMOVAL_HOLD_MAX_S = 30.0
# Channel directories younger than this may belong to a container that is being created.
_PRUNE_MIN_AGE_S = 300.0


@contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """The engine's and its transport's exceptions as RuntimeUnavailableError."""
    try:
        yield
    except (DockerException, requests.RequestException) as exc:
        raise RuntimeUnavailableError(f"Docker engine: {action}: {exc}") from exc


def connect_engine(base_url: str, oci_runtime: str) -> docker.APIClient:
    """Client for ``base_url`` (empty: DOCKER_HOST or the local socket), API version probed.

    Refuses (RuntimeUnavailableError) when the engine does not know ``oci_runtime``: the service
    must not start and then fail every create.
    """
    # More pooled engine connections than the SDK's 10: the sweep stops 16 sandboxes at
    # once, next to the executions (a full pool drops and reopens connections).
    where: dict[str, Any] = (
        {"base_url": base_url} if base_url else dict(docker.utils.kwargs_from_env())
    )
    with engine_errors("connect"):
        client = docker.APIClient(version="auto", timeout=60, max_pool_size=_POOL_SIZE, **where)
        registered = client.info().get("Runtimes") or {}
    if oci_runtime not in registered:
        client.close()
        known = ", ".join(sorted(registered)) or "none"
        how = (
            "`scripts/setup.sh gvisor` installs runsc and registers it with dockerd"
            if oci_runtime == "runsc"
            else "register it in /etc/docker/daemon.json"
        )
        raise RuntimeUnavailableError(
            f"the Docker engine has no OCI runtime {oci_runtime!r} "
            f"(SANDBOXD_DOCKER_RUNTIME; registered: {known}); {how}"
        )
    return client


class DockerContainers:
    """This service instance's containers on one engine, and their channel directories."""

    def __init__(self, api: docker.APIClient, config: DockerSandboxConfig, logger: Logger):
        self._api = api
        self._config = config
        self._logger = logger
        self.channels_root = (config.data_dir / "sandboxes").resolve()
        # Killed containers whose removal is queued or under way (see remove_later).
        self._removing: set[str] = set()
        self._removing_lock = threading.Lock()
        self._removals = ThreadPoolExecutor(_REMOVERS, thread_name_prefix="docker-remove")
        self._last_queued = 0.0

    def start(self, session_id: UUID, chat_id: UUID, image: str, channel: Path) -> str:
        """Create and start the sandbox container; its id (which may be set even on failure:
        the caller discards it)."""
        with engine_errors("create container"):
            try:
                container_id: str = self._api.create_container(
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
                    f"sandbox image {image} is not in the Docker engine; run `sandboxd image build`"
                ) from exc
            self._api.start(container_id)
        return container_id

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        if not container_id:
            return None
        with engine_errors("inspect container"):
            try:
                return self._api.inspect_container(container_id)  # type: ignore[no-any-return]
            except NotFound:
                return None

    def is_running(self, container_id: str) -> bool:
        info = self.inspect(container_id)
        return info is not None and bool(info["State"].get("Running"))

    def channel_of(self, info: dict[str, Any]) -> Path | None:
        """The container's channel directory, only if it lies under our own channels root."""
        label = (info.get("Config", {}).get("Labels") or {}).get(LABEL_CHANNEL)
        if not label:
            return None
        channel = Path(label)
        return channel if channel.parent == self.channels_root else None

    def remove(self, container_id: str) -> None:
        """Remove the container and its channel directory; gone already is fine."""
        info = self.inspect(container_id)
        if info is None:
            return
        with engine_errors("remove container"):
            try:
                self._api.remove_container(container_id, force=True, v=True)
            except NotFound:
                pass
            except docker.errors.APIError as exc:
                # Another caller's removal of the same container is already under way.
                if exc.status_code != 409:
                    raise
        channel = self.channel_of(info)
        if channel is not None:
            shutil.rmtree(channel, ignore_errors=True)
        self._logger.info("docker_sandbox_removed", {"container_id": container_id})

    def remove_later(self, container_id: str) -> None:
        """Remove a container whose processes are already dead, in the background.

        ``list_managed`` leaves it out meanwhile, so reconciliation does not remove it a second
        time on its own thread; a failed removal is logged and dropped from that set, and
        reconciliation removes the orphan on a later sweep (also after a crash: it is labelled).
        """
        with self._removing_lock:
            if container_id in self._removing:
                return
            self._removing.add(container_id)
            self._last_queued = queued = time.monotonic()
        self._removals.submit(self._remove_queued, container_id, queued)

    def _remove_queued(self, container_id: str, queued: float) -> None:
        try:
            self._hold_while_queueing(queued)
            self.remove(container_id)
        except Exception as exc:
            self._logger.error(
                "docker_sandbox_remove_failed",
                {"container_id": container_id, "error": type(exc).__name__},
            )
        finally:
            with self._removing_lock:
                self._removing.discard(container_id)

    def _hold_while_queueing(self, queued: float) -> None:
        """Wait until removals have stopped being queued for a moment (a sweep round is over)."""
        while True:
            with self._removing_lock:
                quiet_at = self._last_queued + _REMOVAL_QUIET_S
            wait = min(quiet_at, queued + _REMOVAL_HOLD_MAX_S) - time.monotonic()
            if wait <= 0:
                return
            time.sleep(wait)

    def discard(self, container_id: str, channel: Path) -> None:
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

    def log_tail(self, container_id: str) -> str:
        try:
            logs = self._api.logs(container_id, tail=10)
        except (DockerException, requests.RequestException):
            return "(unavailable)"
        return logs.decode(errors="replace").strip() if isinstance(logs, bytes) else str(logs)

    def list_managed(self) -> list[ManagedSandbox]:
        """This instance's containers; also prunes channel directories no container uses.

        Reconciliation calls this at start and on every sweep, which makes it the place where
        directories of containers removed behind our back (``docker rm``) go away too.
        """
        with engine_errors("list containers"):
            containers = self._api.containers(
                all=True, filters={"label": f"{LABEL_INSTANCE}={self._config.instance_id}"}
            )
        self._prune_channels()
        with self._removing_lock:
            removing = set(self._removing)
        return [
            ManagedSandbox(
                container_id=item["Id"],
                session_id=_uuid_or_none((item.get("Labels") or {}).get(LABEL_SESSION)),
                chat_id=_uuid_or_none((item.get("Labels") or {}).get(LABEL_CHAT)),
                running=item.get("State") == "running",
            )
            for item in containers
            if item["Id"] not in removing
        ]

    def close(self) -> None:
        """Finish the queued removals (killed containers must not stay behind), then close."""
        self._removals.shutdown(wait=True)
        self._api.close()

    def _prune_channels(self) -> None:
        """Remove channel directories that no container (of any instance) refers to.

        Only directories older than _PRUNE_MIN_AGE_S: one being set up for a container that is
        about to be created must stay.
        """
        if not self.channels_root.is_dir():
            return
        with engine_errors("list containers"):
            everyone = self._api.containers(all=True, filters={"label": LABEL_CHANNEL})
        in_use = {(item.get("Labels") or {}).get(LABEL_CHANNEL) for item in everyone}
        now = time.time()
        for channel in self.channels_root.iterdir():
            try:
                old_enough = now - channel.stat().st_mtime > _PRUNE_MIN_AGE_S
            except OSError:
                continue
            if str(channel) not in in_use and old_enough:
                shutil.rmtree(channel, ignore_errors=True)
                self._logger.info("docker_channel_pruned", {"channel": str(channel)})


def _uuid_or_none(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None
