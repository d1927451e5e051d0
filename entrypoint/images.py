"""Sandbox image preparation, shared by ``sandboxd image build`` and ``sandboxd serve``'s start-up.

Every step is content-hashed and skipped when its inputs did not change, so calling this on each
start costs a second once the image exists.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from adapter.image.rootfs import RootfsBuildError, build_rootfs
from adapter.qemu.runtime import QemuSandboxRuntime
from domain.errors import RuntimeUnavailableError
from entrypoint.settings import Settings

Progress = Callable[[str], None]


def print_progress(message: str) -> None:
    print(f"[image] {message}", file=sys.stderr, flush=True)


def build_runtime_image(
    settings: Settings,
    runtime_kind: str,
    qemu_runtime: Callable[[], QemuSandboxRuntime],
    progress: Progress = print_progress,
) -> str:
    """Build what ``runtime_kind`` needs; return the Docker tag or the qcow2 base image path.

    For QEMU this also boots one VM to save the memory snapshot when it is missing or stale
    (SANDBOXD_QEMU_SNAPSHOT), so that the first sandbox restores in a fraction of a second
    instead of cold-booting. Raises RuntimeUnavailableError when a build step fails.
    """
    try:
        if runtime_kind == "docker":
            return _build_docker_image(settings, progress)
        from adapter.qemu.image import build_qemu_image

        image_dir = settings.qemu.image_dir or settings.data_dir
        artifact = build_rootfs(image_dir, progress)
        image = build_qemu_image(
            image_dir,
            artifact.path,
            artifact.content_hash,
            progress,
        )
    except RootfsBuildError as exc:
        raise RuntimeUnavailableError(f"sandbox image build failed: {exc}") from exc
    if settings.qemu.snapshot:
        progress("memory snapshot (boots one VM if it is missing or stale)")
        snapshot = qemu_runtime().prepare_snapshot()
        progress(f"snapshot: {snapshot or 'failed, sandboxes will cold-boot'}")
    return str(image.base)


def _build_docker_image(settings: Settings, progress: Progress) -> str:
    import docker

    from adapter.docker.image import ensure_docker_image

    try:
        client = docker.APIClient(
            base_url=settings.docker.base_url or None, version="auto", timeout=600
        )
    except docker.errors.DockerException as exc:
        raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
    return ensure_docker_image(
        client, settings.data_dir, settings.docker.image_repository, progress
    )


def prepare_runtime_image(
    settings: Settings, qemu_runtime: Callable[[], QemuSandboxRuntime]
) -> None:
    """The service's start-up step: build the configured runtime's image on first run.

    Skipped when SANDBOXD_DOCKER_IMAGE names an image of the user's own.
    """
    if settings.runtime == "docker" and settings.docker.image:
        return
    build_runtime_image(settings, settings.runtime, qemu_runtime)
