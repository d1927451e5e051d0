"""Builds a Docker environment image for one key.

1. the host fetches built artifacts only (``adapter.environment.host_fetch``): wheels, or npm
   packages unpacked with their scripts ignored; no package code runs on the host;
2. a build container from the base image, with no network, all capabilities dropped,
   no-new-privileges and memory/pids limits, gets them mounted read-only and installs offline
   (``pip install --no-index --find-links``; npm packages are copied onto node's global path);
3. the container is committed as the key's image (adapter.environment.docker_images).
A failed build removes its container and tags nothing; a crashed builder's containers
(labelled ``sandboxd.environment.builder=<repository>:<key>``) and staging directories are
removed before the next build of the key.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import requests

from adapter.environment.docker_images import (
    ENGINE_ERRORS,
    LABEL_BUILDER,
    DockerEnvironmentImages,
    engine_error,
)
from adapter.environment.host_fetch import download_wheels, stage_npm_packages
from adapter.environment.install_commands import copy_node_modules_command, pip_install_command
from domain.environment import BuiltEnvironment, Environment
from domain.errors import EnvironmentBuildError, RuntimeUnavailableError
from domain.execution import Language
from usecase.ports import Clock, Logger

Progress = Callable[[str], None]

WHEELS_MOUNT = "/sandboxd-wheels"
NODE_MODULES_MOUNT = "/sandboxd-node-modules"


class DockerEnvironmentBuilder:
    """Builds keys into ``images`` (see the module docstring)."""

    def __init__(
        self, images: DockerEnvironmentImages, clock: Clock, logger: Logger, progress: Progress
    ) -> None:
        self._images = images
        self._clock = clock
        self._logger = logger
        self._progress = progress
        self._staging_root = images.config.root / "staging"

    def build(self, environment: Environment, key: str) -> BuiltEnvironment:
        self._staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=self._staging_root))
        fetch = self._images.config.fetch
        try:
            if environment.language is Language.PYTHON:
                wheels = staging / "wheels"
                wheels.mkdir()
                found = download_wheels(fetch, environment.packages, wheels, self._progress)
                self._progress(f"fetched {len(found)} wheels")
                command = pip_install_command(WHEELS_MOUNT, "--", *environment.packages)
                mount = (wheels, WHEELS_MOUNT)
            elif environment.language is Language.JAVASCRIPT:
                modules = stage_npm_packages(
                    fetch, environment.packages, staging / "npm", self._progress
                )
                command = copy_node_modules_command(NODE_MODULES_MOUNT)
                mount = (modules, NODE_MODULES_MOUNT)
            else:  # Environment refuses packages for other languages
                raise EnvironmentBuildError(f"no package support for {environment.language}")
            self._install_and_commit(environment, key, command, mount)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        built = self._images.find(key)
        if built is None:
            raise RuntimeUnavailableError(f"docker commit did not produce {self._images.tag(key)}")
        return built

    def remove_leftovers(self, key: str) -> None:
        """Build containers and staging dirs of this key from a builder that crashed; safe under
        the key's lock, since no other builder on this host is working on it."""
        client = self._images.client
        try:
            stale = client.containers(
                all=True, filters={"label": f"{LABEL_BUILDER}={self._images.tag(key)}"}
            )
            for container in stale:
                client.remove_container(container["Id"], force=True)
        except ENGINE_ERRORS as exc:
            raise engine_error(exc) from exc
        for directory in self._staging_root.glob(f"{key}-*"):
            if directory.is_dir():
                shutil.rmtree(directory, ignore_errors=True)
        if stale:
            self._logger.warning("environment_build_leftovers_removed", {"key": key})

    def _install_and_commit(
        self, environment: Environment, key: str, command: list[str], mount: tuple[Path, str]
    ) -> None:
        client = self._images.client
        config = self._images.config
        self._images.base()  # a clear error when it is missing
        try:
            host_config = client.create_host_config(
                binds={str(mount[0]): {"bind": mount[1], "mode": "ro"}},
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                mem_limit=f"{config.build_memory_mb}m",
                pids_limit=config.build_pids,
            )
        except ENGINE_ERRORS as exc:
            raise engine_error(exc) from exc
        with self._images.scratch_container(
            config.base_image, key, command=command, host_config=host_config
        ) as container_id:
            self._progress(f"installing in build container {container_id[:12]}")
            client.start(container_id)
            try:
                status = client.wait(container_id, timeout=int(config.build_timeout_s))
            except requests.exceptions.ReadTimeout as exc:
                raise EnvironmentBuildError(
                    f"install of {key} took longer than {config.build_timeout_s:.0f}s"
                ) from exc
            logs = client.logs(container_id).decode(errors="replace")
            if status.get("StatusCode") != 0:
                raise EnvironmentBuildError(
                    f"install in the build container failed: {_tail(logs)}",
                    package=_failed_package(logs),
                )
            self._images.commit(container_id, environment, key, self._clock)


_PIP_NOT_FOUND = re.compile(r"No matching distribution found for ([A-Za-z0-9._\-\[\]]+)")


def _failed_package(logs: str) -> str | None:
    match = _PIP_NOT_FOUND.search(logs)
    return match.group(1) if match else None


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
