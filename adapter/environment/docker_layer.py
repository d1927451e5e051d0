"""The Docker environment's L3 artifact: its own layer, not a ``docker save`` of the image
(1.3 GB with the base). That is what the install added, the tree of ``/usr/local`` (Python) or
node's global module directory (JavaScript), read with ``docker cp`` semantics from a created,
never started container. Loading is the reverse: a container from the base image gets the tree
put in place and is committed with the same labels as a build."""

from __future__ import annotations

import os
from pathlib import Path

from adapter.environment.docker_images import DockerEnvironmentImages
from adapter.environment.install_commands import NODE_GLOBAL_DIR
from domain.environment import BuiltEnvironment, Environment
from domain.errors import RuntimeUnavailableError
from domain.execution import Language
from usecase.ports import Clock

# What an environment's install adds to the base image, per language.
LAYER_DIRS = {Language.PYTHON: "/usr/local", Language.JAVASCRIPT: NODE_GLOBAL_DIR}


class DockerLayerArchive:
    """Exports and loads environment layers of ``images`` as tar files."""

    def __init__(self, images: DockerEnvironmentImages, clock: Clock) -> None:
        self._images = images
        self._clock = clock

    def export(self, key: str, destination: Path) -> None:
        """Write the environment's own layer as a tar file."""
        tag = self._images.tag(key)
        if self._images.inspect(tag) is None:
            raise RuntimeUnavailableError(f"no environment image for {key}")
        layer_dir = LAYER_DIRS[Language(key.split("-v", 1)[0])]
        with self._images.scratch_container(tag, key, command=["true"]) as container_id:
            stream, _stat = self._images.client.get_archive(container_id, layer_dir)
            with destination.open("wb") as out:
                for chunk in stream:
                    out.write(chunk)

    def load(self, environment: Environment, key: str, archive: Path) -> BuiltEnvironment:
        """Tag ``archive`` (a layer tar) over the base image as the key's image."""
        base_image = self._images.config.base_image
        self._images.base()  # a clear error when it is missing
        layer_parent = os.path.dirname(LAYER_DIRS[environment.language])
        with self._images.scratch_container(base_image, key, command=["true"]) as container_id:
            with archive.open("rb") as data:
                if not self._images.client.put_archive(container_id, layer_parent, data):
                    raise RuntimeUnavailableError(f"the engine refused the layer of {key}")
            self._images.commit(container_id, environment, key, self._clock)
        built = self._images.find(key)
        if built is None:
            raise RuntimeUnavailableError(f"docker commit did not produce {self._images.tag(key)}")
        return built
