"""The Docker sandbox image: the shared root filesystem, imported with ``docker import``.

No registry is needed: the tag carries the root filesystem's content hash
(``sandboxd-sandbox:<hash12>``), so an unchanged input is a no-op and a changed agent or package
list gives a new tag that old containers never see.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import docker
import requests
from docker.errors import DockerException, ImageNotFound

from adapter.image.rootfs import (
    AGENT_GUEST_PATH,
    PRUNE_AFTER_S,
    Progress,
    build_rootfs,
    rootfs_hash,
)
from domain.errors import RuntimeUnavailableError

DEFAULT_REPOSITORY = "sandboxd-sandbox"
AGENT_SOCKET_DIR = "/run/sandboxd"
AGENT_SOCKET = f"{AGENT_SOCKET_DIR}/agent.sock"
AGENT_COMMAND = ["python3", AGENT_GUEST_PATH, "--listen", AGENT_SOCKET]


def default_image_tag(repository: str = DEFAULT_REPOSITORY) -> str:
    """The tag the current inputs build to; computing it builds nothing."""
    return f"{repository}:{rootfs_hash()[:12]}"


def ensure_docker_image(
    client: docker.APIClient,
    data_dir: Path,
    repository: str = DEFAULT_REPOSITORY,
    progress: Progress = lambda _message: None,
) -> str:
    """Build the root filesystem if needed and import it; return the image tag.

    Skips everything when an image with the current content hash is already in the engine.
    Raises RuntimeUnavailableError when the engine refuses, RootfsBuildError when the build fails.
    """
    tag = default_image_tag(repository)
    try:
        if _exists(client, tag):
            progress(f"image {tag} is up to date")
            return tag
        artifact = build_rootfs(data_dir, progress)
        size_mb = artifact.tarball.stat().st_size / 1e6
        progress(f"docker import {artifact.tarball} ({size_mb:.0f} MB) as {tag}")
        changes = [
            f"CMD {json.dumps(AGENT_COMMAND)}",
            "WORKDIR /workspace",
            "ENV LANG=C.UTF-8",
            f"LABEL sandboxd.rootfs_hash={artifact.content_hash}",
        ]
        client.import_image_from_file(
            str(artifact.tarball), repository=repository, tag=tag.split(":", 1)[1], changes=changes
        )
        if not _exists(client, tag):
            raise RuntimeUnavailableError(f"docker import did not produce {tag}")
    except (DockerException, requests.RequestException) as exc:
        raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
    progress(f"imported {tag}")
    _remove_unused_old_tags(client, repository, keep=tag, progress=progress)
    return tag


def _remove_unused_old_tags(
    client: docker.APIClient, repository: str, keep: str, progress: Progress
) -> None:
    """Older builds of the image, an hour old or more; the engine refuses (and we skip) those
    that containers still use."""
    try:
        images = client.images(name=repository)
    except (DockerException, requests.RequestException):
        return
    now = time.time()
    for image in images:
        if now - float(image.get("Created") or now) < PRUNE_AFTER_S:
            continue  # may be in use by a concurrent session that is about to create containers
        for old in image.get("RepoTags") or []:
            if old != keep and old.startswith(f"{repository}:"):
                try:
                    client.remove_image(old)
                    progress(f"removed old image {old}")
                except (DockerException, requests.RequestException):
                    pass


def _exists(client: docker.APIClient, tag: str) -> bool:
    try:
        client.inspect_image(tag)  # type: ignore[no-untyped-call]
    except ImageNotFound:
        return False
    return True
