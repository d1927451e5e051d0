"""The Docker L2 itself: environment images ``<repository>:<key>`` and what is known of them.

An environment image is a layer over the base sandbox image, labelled ``sandboxd.environment.key``,
``.packages`` and ``.created``, with the base image's command. Its size is its own layers' (the
image's ``Size`` minus the base image's). Use is recorded as the mtime of a stamp file per key
(``<data_dir>/environments/used/<key>``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import DockerException, ImageNotFound, NotFound

from adapter.environment.host_fetch import HostFetchConfig
from domain.environment import BuiltEnvironment, Environment, is_cache_key
from domain.errors import RuntimeUnavailableError
from domain.execution import Language
from usecase.ports import Clock

LABEL_KEY = "sandboxd.environment.key"
LABEL_PACKAGES = "sandboxd.environment.packages"
LABEL_CREATED = "sandboxd.environment.created"
# On build containers only (the committed image carries it empty): finds leftovers of a crash.
# Its value is the image's tag, not the key alone: another service on the same engine (its own
# repository) may be building the same key right now.
LABEL_BUILDER = "sandboxd.environment.builder"


@dataclass(frozen=True)
class DockerEnvironmentConfig:
    base_image: str
    data_dir: Path
    service_version: str
    repository: str = "sandboxd-env"
    max_total_mb: int = 8192
    build_memory_mb: int = 1024
    build_pids: int = 256
    build_timeout_s: float = 900.0
    lock_timeout_s: float = 1800.0
    max_concurrent_uploads: int = 2
    fetch: HostFetchConfig = field(default_factory=HostFetchConfig)

    @property
    def root(self) -> Path:
        return self.data_dir / "environments"


def engine_error(exc: Exception) -> RuntimeUnavailableError:
    return RuntimeUnavailableError(f"Docker engine: {exc}")


ENGINE_ERRORS = (DockerException, requests.RequestException)


class DockerEnvironmentImages:
    """Environment images of one repository (see the module docstring)."""

    def __init__(self, client: docker.APIClient, config: DockerEnvironmentConfig) -> None:
        self.client = client
        self.config = config
        self._base_image_hash: str | None = None

    def tag(self, key: str) -> str:
        return f"{self.config.repository}:{key}"

    def inspect(self, reference: str) -> dict[str, Any] | None:
        try:
            return self.client.inspect_image(reference)  # type: ignore[no-any-return,no-untyped-call]
        except (ImageNotFound, NotFound):
            return None
        except ENGINE_ERRORS as exc:
            raise engine_error(exc) from exc

    def base(self) -> dict[str, Any]:
        image = self.inspect(self.config.base_image)
        if image is None:
            raise RuntimeUnavailableError(f"base image {self.config.base_image} is missing")
        return image

    def image_hash(self) -> str:
        if self._base_image_hash is None:
            self._base_image_hash = str(self.base()["Id"]).removeprefix("sha256:")
        return self._base_image_hash

    @contextmanager
    def scratch_container(self, image: str, key: str, **options: Any) -> Iterator[str]:
        """A container of ``image`` (labelled as a builder of ``key``'s tag) for the duration of
        the context, removed however it ends; engine errors become RuntimeUnavailableError."""
        container_id: str | None = None
        try:
            container_id = self.client.create_container(
                image, labels={LABEL_BUILDER: self.tag(key)}, network_disabled=True, **options
            )["Id"]
            yield container_id
        except ENGINE_ERRORS as exc:
            raise engine_error(exc) from exc
        finally:
            if container_id is not None:
                with contextlib.suppress(*ENGINE_ERRORS):
                    self.client.remove_container(container_id, force=True)

    def find(self, key: str) -> BuiltEnvironment | None:
        image = self.inspect(self.tag(key))
        return None if image is None else self.built(key, image)

    def built(self, key: str, image: dict[str, Any]) -> BuiltEnvironment:
        labels = (image.get("Config") or {}).get("Labels") or {}
        return self._environment(key, labels, int(image.get("Size") or 0) - self._base_size())

    def commit(self, container_id: str, environment: Environment, key: str, clock: Clock) -> None:
        """Tag the container as the key's image, with the labels and the base image's command."""
        base_config = self.base().get("Config") or {}
        changes = [f"LABEL {LABEL_BUILDER}=", f"LABEL {LABEL_KEY}={key}"]
        if base_config.get("Cmd"):
            changes.append(f"CMD {json.dumps(base_config['Cmd'])}")
        # Requirements are validated: no quotes, backslashes or whitespace inside one.
        changes.append(f'LABEL {LABEL_PACKAGES}="{" ".join(environment.packages)}"')
        changes.append(f"LABEL {LABEL_CREATED}={clock.now().isoformat()}")
        try:
            self.client.commit(
                container_id, repository=self.config.repository, tag=key, changes=changes
            )
        except ENGINE_ERRORS as exc:
            raise engine_error(exc) from exc

    def inventory(self) -> list[BuiltEnvironment]:
        base_size = self._base_size()
        found = []
        for image in self._listed():
            labels = image.get("Labels") or {}
            key = labels.get(LABEL_KEY, "")
            if is_cache_key(key):
                own = int(image.get("Size") or 0) - base_size
                found.append(self._environment(key, labels, own))
        return found

    def remove(self, key: str) -> None:
        try:
            self.client.remove_image(self.tag(key))
        except ImageNotFound:
            pass
        except ENGINE_ERRORS as exc:  # in use by a container: the engine refuses
            raise engine_error(exc) from exc
        (self.config.root / "used" / key).unlink(missing_ok=True)

    def touch(self, key: str) -> None:
        stamp = self.config.root / "used" / key
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()

    def last_used(self, key: str) -> float:
        try:
            return (self.config.root / "used" / key).stat().st_mtime
        except OSError:
            return 0.0

    def _listed(self) -> list[dict[str, Any]]:
        try:
            images: list[dict[str, Any]] = self.client.images(
                name=self.config.repository, filters={"label": LABEL_KEY}
            )
        except ENGINE_ERRORS as exc:
            raise engine_error(exc) from exc
        return images

    def _base_size(self) -> int:
        base = self.inspect(self.config.base_image)
        return int(base.get("Size") or 0) if base else 0

    def _environment(self, key: str, labels: dict[str, str], own_size: int) -> BuiltEnvironment:
        language = Language(key.split("-v", 1)[0])
        packages = tuple(labels.get(LABEL_PACKAGES, "").split())
        return BuiltEnvironment(
            key=key,
            environment=Environment(language, packages),
            reference=self.tag(key),
            size_bytes=max(0, own_size),
        )
