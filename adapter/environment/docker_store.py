"""L2 for Docker: one image per environment key, a layer over the base sandbox image, with the
S3 tier (L3) behind it.

The parts: adapter.environment.docker_images (the images and their labels, sizes and use
stamps), docker_builder (a build in a container with no network), docker_layer (the L3 artifact:
the environment's own layer as a tar, ``images/{key}.tar.zst``); the way through the tiers, the
per-key lock, LRU eviction and the background uploads are shared with the QEMU store
(adapter.environment.tiered_store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker

from adapter.environment.artifact_transfer import EnvironmentCacheObserver, staging_file
from adapter.environment.docker_builder import DockerEnvironmentBuilder
from adapter.environment.docker_images import DockerEnvironmentConfig, DockerEnvironmentImages
from adapter.environment.docker_layer import DockerLayerArchive
from adapter.environment.tiered_store import TieredEnvironmentStore
from domain.environment import ArtifactKind, BuiltEnvironment, Environment
from usecase.ports import ArtifactStore, Clock, Logger

Progress = Callable[[str], None]


class DockerEnvironmentStore(TieredEnvironmentStore):
    """EnvironmentStore port on the Docker engine; see the module docstring."""

    def __init__(
        self,
        client: docker.APIClient,
        config: DockerEnvironmentConfig,
        clock: Clock,
        logger: Logger,
        progress: Progress = lambda _message: None,
        artifacts: ArtifactStore | None = None,
        observer: EnvironmentCacheObserver | None = None,
    ) -> None:
        super().__init__(config.root, ArtifactKind.IMAGE, config, logger, artifacts, observer)
        self.config = config
        self.images = DockerEnvironmentImages(client, config)
        self._builder = DockerEnvironmentBuilder(self.images, clock, logger, progress)
        self._layers = DockerLayerArchive(self.images, clock)

    def key_for(self, environment: Environment) -> str:
        return environment.cache_key(self.config.service_version, self.images.image_hash())

    def _base(self, environment: Environment, key: str) -> BuiltEnvironment:
        self.images.base()
        return BuiltEnvironment(key, environment, self.config.base_image, 0)

    def _find_local(self, key: str) -> BuiltEnvironment | None:
        return self.images.find(key)

    def _build(self, environment: Environment, key: str) -> BuiltEnvironment:
        return self._builder.build(environment, key)

    def _load_artifact(
        self, environment: Environment, key: str, artifact: Path
    ) -> BuiltEnvironment:
        return self._layers.load(environment, key, artifact)

    @contextmanager
    def _artifact_file(self, key: str) -> Iterator[Path]:
        with staging_file(self.config.root, key, "upload", ".tar") as archive:
            self._layers.export(key, archive)
            yield archive

    def _remove_leftovers(self, key: str) -> None:
        self._builder.remove_leftovers(key)

    def _inventory(self) -> list[BuiltEnvironment]:
        return self.images.inventory()

    def _touch(self, key: str) -> None:
        self.images.touch(key)

    def _last_used(self, key: str) -> float:
        return self.images.last_used(key)

    def _remove_local(self, key: str) -> None:
        self.images.remove(key)
