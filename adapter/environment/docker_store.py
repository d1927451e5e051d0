"""L2 for Docker: one image per environment key, a layer over the base sandbox image.

Build of a key (``sandboxd-env:<key>``):
1. the host fetches built artifacts only (``adapter.environment.host_fetch``): wheels, or npm
   packages unpacked with their scripts ignored; no package code runs on the host;
2. a build container from the base image, with no network, all capabilities dropped,
   no-new-privileges and memory/pids limits, gets them mounted read-only and installs offline
   (``pip install --no-index --find-links``; npm packages are copied onto node's global path);
3. ``docker commit`` tags the result, restoring the base image's command and adding the labels
   ``sandboxd.environment.key``, ``.packages`` and ``.created``.

The build of one key runs under a file lock in ``<data_dir>/environments/locks``, so builders on
this host (threads, processes, CLIs) build it once; the others wait and find the tag. A failed
build removes its container and tags nothing. After a build, environments past ``max_total_mb``
are removed least recently used first (use is recorded as the mtime of a stamp file per key;
sizes are each image's own layers, ``Size`` minus the base image's). The base environment
(no packages) is the base image itself and is never built or evicted.

L3 (an ArtifactStore, optional): on a local miss, under the key's lock, the store looks for
``images/{key}.tar.zst`` before building; a hit is loaded into the engine (below) and tagged as a
build would be. After a local build the entry is uploaded in the background. The artifact is the
environment's own layer only, not a ``docker save`` of the image (1.3 GB with the base): what the
install added, the tree of ``/usr/local`` (Python) or node's global module directory
(JavaScript), read with ``docker cp`` semantics from a created, never started container. Loading
is the reverse: a container from the base image gets the tree put in place and is committed with
the same labels. The artifact store never fails a request: a failed download is logged and the
key is built locally; a failed upload is logged, marked pending (``environments/pending-upload``),
and retried by ``retry_uploads`` (the service's sweep calls it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import docker
import requests
from docker.errors import DockerException, ImageNotFound, NotFound
from filelock import FileLock, Timeout

from adapter.environment.host_fetch import HostFetchConfig, download_wheels, stage_npm_packages
from domain.environment import ArtifactKind, BuiltEnvironment, Environment, is_cache_key
from domain.errors import (
    ArtifactStoreUnavailableError,
    EnvironmentBuildError,
    RuntimeUnavailableError,
)
from domain.execution import Language
from usecase.ports import ArtifactStore, Clock, Logger

Progress = Callable[[str], None]

LABEL_KEY = "sandboxd.environment.key"
LABEL_PACKAGES = "sandboxd.environment.packages"
LABEL_CREATED = "sandboxd.environment.created"
# On build containers only (the committed image carries it empty): finds leftovers of a crash.
LABEL_BUILDER = "sandboxd.environment.builder"
WHEELS_MOUNT = "/sandboxd-wheels"
NODE_MODULES_MOUNT = "/sandboxd-node-modules"
# On node's built-in global path in Debian's nodejs, so require() finds these without NODE_PATH.
NODE_GLOBAL_DIR = "/usr/lib/x86_64-linux-gnu/nodejs"


# What an environment's install adds to the base image, per language (the L3 artifact).
LAYER_DIRS = {Language.PYTHON: "/usr/local", Language.JAVASCRIPT: NODE_GLOBAL_DIR}


class EnvironmentCacheObserver(Protocol):
    """Where the store reports its cache outcomes (the service's metrics)."""

    def cache_hit(self, level: str) -> None:
        """``l2`` (local), ``l3`` (artifact store) or ``miss`` (built)."""
        ...

    def built(self, seconds: float) -> None: ...

    def downloaded(self, seconds: float) -> None:
        """An L3 hit: download, decompress and load into the engine."""
        ...


class _NoObserver:
    def cache_hit(self, level: str) -> None:
        pass

    def built(self, seconds: float) -> None:
        pass

    def downloaded(self, seconds: float) -> None:
        pass


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
    fetch: HostFetchConfig = field(default_factory=HostFetchConfig)


class DockerEnvironmentStore:
    """EnvironmentStore port on the Docker engine; see the module docstring for the rules."""

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
        self._client = client
        self._config = config
        self._clock = clock
        self._logger = logger
        self._progress = progress
        self._artifacts = artifacts if artifacts is not None and artifacts.enabled else None
        self._observer = observer or _NoObserver()
        self._root = config.data_dir / "environments"
        self._base_image_hash: str | None = None
        self._uploader: ThreadPoolExecutor | None = None

    # -- port ---------------------------------------------------------------------------------

    def key_for(self, environment: Environment) -> str:
        return environment.cache_key(self._config.service_version, self._image_hash())

    def find(self, key: str) -> BuiltEnvironment | None:
        if not is_cache_key(key):
            return None
        if key.endswith("-base"):
            return None  # the base has no environment object; ensure() answers for it
        image = self._inspect(self._tag(key))
        if image is None:
            return None
        self._touch(key)
        return self._built(key, image)

    def ensure(self, environment: Environment) -> BuiltEnvironment:
        key = self.key_for(environment)
        if environment.is_base:
            base = self._inspect(self._config.base_image)
            if base is None:
                raise RuntimeUnavailableError(f"base image {self._config.base_image} is missing")
            return BuiltEnvironment(key, environment, self._config.base_image, 0)
        found = self.find(key)
        if found is not None:
            self._logger.info("environment_found", {"key": key})
            self._observer.cache_hit("l2")
            return found
        lock_path = self._root / "locks" / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock_path), timeout=self._config.lock_timeout_s):
                found = self.find(key)  # built by another process while we waited
                if found is not None:
                    self._logger.info("environment_found", {"key": key, "after_wait": True})
                    self._observer.cache_hit("l2")
                    return found
                self._remove_leftovers(key)
                built = self._from_artifacts(environment, key)
                if built is not None:
                    self._observer.cache_hit("l3")
                else:
                    self._observer.cache_hit("miss")
                    built = self._build(environment, key)
                    self._schedule_upload(key)
        except Timeout as exc:
            raise EnvironmentBuildError(f"timed out waiting for the build of {key}") from exc
        self._evict(keep=key)
        return built

    def remove(self, key: str) -> None:
        if not is_cache_key(key) or key.endswith("-base"):
            return
        try:
            self._client.remove_image(self._tag(key))
        except ImageNotFound:
            pass
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
        (self._root / "used" / key).unlink(missing_ok=True)
        self._logger.info("environment_removed", {"key": key})

    def list_keys(self) -> list[str]:
        """Keys of every environment image this store built (any base image)."""
        return sorted(self._sizes())

    # -- build --------------------------------------------------------------------------------

    def _build(self, environment: Environment, key: str) -> BuiltEnvironment:
        started = time.monotonic()
        staging_root = self._root / "staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=staging_root))
        try:
            if environment.language is Language.PYTHON:
                wheels = staging / "wheels"
                wheels.mkdir()
                found = download_wheels(
                    self._config.fetch, environment.packages, wheels, self._progress
                )
                self._progress(f"fetched {len(found)} wheels")
                command = _pip_install_command(environment.packages)
                mount = (wheels, WHEELS_MOUNT)
            elif environment.language is Language.JAVASCRIPT:
                modules = stage_npm_packages(
                    self._config.fetch, environment.packages, staging / "npm", self._progress
                )
                command = _copy_node_modules_command()
                mount = (modules, NODE_MODULES_MOUNT)
            else:  # Environment refuses packages for other languages
                raise EnvironmentBuildError(f"no package support for {environment.language}")
            image = self._install_and_commit(environment, key, command, mount)
        except EnvironmentBuildError as exc:
            self._logger.error(
                "environment_build_failed",
                {"key": key, "package": exc.package or "", "error": str(exc)[:500]},
            )
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._touch(key)
        built = self._built(key, image)
        self._observer.built(time.monotonic() - started)
        self._logger.info(
            "environment_built",
            {
                "key": key,
                "packages": " ".join(environment.packages),
                "size_bytes": built.size_bytes,
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        return built

    def _install_and_commit(
        self, environment: Environment, key: str, command: list[str], mount: tuple[Path, str]
    ) -> dict[str, Any]:
        client = self._client
        tag = self._tag(key)
        container_id: str | None = None
        try:
            base = self._inspect(self._config.base_image)
            if base is None:
                raise RuntimeUnavailableError(f"base image {self._config.base_image} is missing")
            host_config = client.create_host_config(
                binds={str(mount[0]): {"bind": mount[1], "mode": "ro"}},
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                mem_limit=f"{self._config.build_memory_mb}m",
                pids_limit=self._config.build_pids,
            )
            container_id = client.create_container(
                self._config.base_image,
                command=command,
                host_config=host_config,
                labels={LABEL_BUILDER: key},
                network_disabled=True,
            )["Id"]
            self._progress(f"installing in build container {container_id[:12]}")
            client.start(container_id)
            try:
                status = client.wait(container_id, timeout=int(self._config.build_timeout_s))
            except requests.exceptions.ReadTimeout as exc:
                raise EnvironmentBuildError(
                    f"install of {key} took longer than {self._config.build_timeout_s:.0f}s"
                ) from exc
            logs = client.logs(container_id).decode(errors="replace")
            if status.get("StatusCode") != 0:
                raise EnvironmentBuildError(
                    f"install in the build container failed: {_tail(logs)}",
                    package=_failed_package(logs),
                )
            client.commit(
                container_id,
                repository=self._config.repository,
                tag=key,
                changes=self._commit_changes(environment, key, base),
            )
            image = self._inspect(tag)
            if image is None:
                raise RuntimeUnavailableError(f"docker commit did not produce {tag}")
            return image
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
        finally:
            if container_id is not None:
                with contextlib.suppress(DockerException, requests.RequestException):
                    client.remove_container(container_id, force=True)

    def _commit_changes(
        self, environment: Environment, key: str, base: dict[str, Any]
    ) -> list[str]:
        base_config = base.get("Config") or {}
        changes = [f"LABEL {LABEL_BUILDER}=", f"LABEL {LABEL_KEY}={key}"]
        if base_config.get("Cmd"):
            changes.append(f"CMD {json.dumps(base_config['Cmd'])}")
        # Requirements are validated: no quotes, backslashes or whitespace inside one.
        changes.append(f'LABEL {LABEL_PACKAGES}="{" ".join(environment.packages)}"')
        changes.append(f"LABEL {LABEL_CREATED}={self._clock.now().isoformat()}")
        return changes

    def _remove_leftovers(self, key: str) -> None:
        """Build containers and staging dirs of this key from a builder that crashed; safe under
        the key's lock, since no other builder on this host is working on it."""
        try:
            stale = self._client.containers(all=True, filters={"label": f"{LABEL_BUILDER}={key}"})
            for container in stale:
                self._client.remove_container(container["Id"], force=True)
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
        for directory in (self._root / "staging").glob(f"{key}-*"):
            shutil.rmtree(directory, ignore_errors=True)
        if stale:
            self._logger.warning("environment_build_leftovers_removed", {"key": key})

    # -- L3 -------------------------------------------------------------------------------------

    def _from_artifacts(self, environment: Environment, key: str) -> BuiltEnvironment | None:
        """Load the key from the artifact store; None when it is not there or anything fails."""
        if self._artifacts is None:
            return None
        started = time.monotonic()
        staging_root = self._root / "staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        archive = staging_root / f"{key}-download.tar"
        try:
            if not self._artifacts.download(ArtifactKind.IMAGE, key, archive):
                return None
            image = self._load_layer(environment, key, archive)
        except (ArtifactStoreUnavailableError, RuntimeUnavailableError, OSError) as exc:
            # The artifact store never fails a request: build locally instead.
            self._logger.warning(
                "environment_download_failed", {"key": key, "error": str(exc)[:300]}
            )
            return None
        finally:
            archive.unlink(missing_ok=True)
        self._touch(key)
        built = self._built(key, image)
        seconds = time.monotonic() - started
        self._observer.downloaded(seconds)
        self._logger.info(
            "environment_downloaded",
            {"key": key, "size_bytes": built.size_bytes, "duration_s": round(seconds, 3)},
        )
        return built

    def _load_layer(self, environment: Environment, key: str, archive: Path) -> dict[str, Any]:
        client = self._client
        container_id: str | None = None
        layer_dir = LAYER_DIRS[environment.language]
        try:
            base = self._inspect(self._config.base_image)
            if base is None:
                raise RuntimeUnavailableError(f"base image {self._config.base_image} is missing")
            container_id = client.create_container(
                self._config.base_image,
                command=["true"],
                labels={LABEL_BUILDER: key},
                network_disabled=True,
            )["Id"]
            with archive.open("rb") as data:
                if not client.put_archive(container_id, os.path.dirname(layer_dir), data):
                    raise RuntimeUnavailableError(f"the engine refused the layer of {key}")
            client.commit(
                container_id,
                repository=self._config.repository,
                tag=key,
                changes=self._commit_changes(environment, key, base),
            )
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
        finally:
            if container_id is not None:
                with contextlib.suppress(DockerException, requests.RequestException):
                    client.remove_container(container_id, force=True)
        image = self._inspect(self._tag(key))
        if image is None:
            raise RuntimeUnavailableError(f"docker commit did not produce {self._tag(key)}")
        return image

    def export_layer(self, key: str, destination: Path) -> None:
        """Write the environment's own layer (see the module docstring) as a tar file."""
        image = self._inspect(self._tag(key))
        if image is None:
            raise RuntimeUnavailableError(f"no environment image for {key}")
        layer_dir = LAYER_DIRS[Language(key.split("-v", 1)[0])]
        container_id: str | None = None
        try:
            container_id = self._client.create_container(
                self._tag(key), command=["true"], network_disabled=True
            )["Id"]
            stream, _stat = self._client.get_archive(container_id, layer_dir)
            with destination.open("wb") as out:
                for chunk in stream:
                    out.write(chunk)
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
        finally:
            if container_id is not None:
                with contextlib.suppress(DockerException, requests.RequestException):
                    self._client.remove_container(container_id, force=True)

    def _schedule_upload(self, key: str) -> None:
        if self._artifacts is None:
            return
        self._mark_pending(key)
        if self._uploader is None:
            self._uploader = ThreadPoolExecutor(1, thread_name_prefix="sandboxd-env-upload")
        self._uploader.submit(self._upload, key)

    def retry_uploads(self) -> int:
        """Upload every key whose upload failed before (the sweep calls this); returns how many
        went up."""
        if self._artifacts is None:
            return 0
        done = 0
        for marker in sorted(self._pending_dir().glob("*")):
            key = marker.name
            if not is_cache_key(key) or self._inspect(self._tag(key)) is None:
                marker.unlink(missing_ok=True)  # evicted meanwhile: nothing to upload
                continue
            done += self._upload(key)
        return done

    def wait_for_uploads(self) -> None:
        """Finish the background uploads under way (tests, CLI builds, shutdown)."""
        uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.shutdown(wait=True)

    def _upload(self, key: str) -> bool:
        assert self._artifacts is not None
        staging_root = self._root / "staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        archive = staging_root / f"{key}-upload-{threading.get_ident()}.tar"
        started = time.monotonic()
        try:
            self.export_layer(key, archive)
            self._artifacts.upload(ArtifactKind.IMAGE, key, archive)
        except Exception as exc:
            # Logged and left pending for the next sweep; never raised to anyone's request.
            self._logger.warning("environment_upload_failed", {"key": key, "error": str(exc)[:300]})
            return False
        finally:
            archive.unlink(missing_ok=True)
        (self._pending_dir() / key).unlink(missing_ok=True)
        self._logger.info(
            "environment_uploaded",
            {"key": key, "duration_s": round(time.monotonic() - started, 3)},
        )
        return True

    def _mark_pending(self, key: str) -> None:
        self._pending_dir().mkdir(parents=True, exist_ok=True)
        (self._pending_dir() / key).touch()

    def _pending_dir(self) -> Path:
        return self._root / "pending-upload"

    def in_artifact_store(self, key: str) -> bool | None:
        """Whether L3 has the key (None: no artifact store, or it cannot be reached)."""
        if self._artifacts is None:
            return None
        try:
            return self._artifacts.exists(ArtifactKind.IMAGE, key)
        except ArtifactStoreUnavailableError:
            return None

    def artifact_keys(self) -> list[str] | None:
        """Keys in the artifact store (None: no artifact store, or it cannot be reached)."""
        if self._artifacts is None:
            return None
        try:
            return self._artifacts.list_keys(ArtifactKind.IMAGE)
        except ArtifactStoreUnavailableError:
            return None

    def last_used(self, key: str) -> float:
        """When the key was last used here (epoch seconds; 0.0 when never recorded)."""
        return self._last_used(key)

    def inventory(self) -> list[tuple[BuiltEnvironment, float]]:
        """Every local environment with when it was last used; marks none as used."""
        try:
            images = self._client.images(name=self._config.repository, filters={"label": LABEL_KEY})
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
        sizes = self._sizes()
        found = []
        for image in images:
            labels = image.get("Labels") or {}
            key = labels.get(LABEL_KEY, "")
            if not is_cache_key(key):
                continue
            environment = Environment(
                Language(key.split("-v", 1)[0]), tuple(labels.get(LABEL_PACKAGES, "").split())
            )
            built = BuiltEnvironment(key, environment, self._tag(key), sizes.get(key, 0))
            found.append((built, self._last_used(key)))
        return sorted(found, key=lambda item: item[0].key)

    def prune(self, remove_all: bool = False) -> list[str]:
        """Evict down to the size budget (least recently used first), or remove every
        environment; returns the keys removed. Images in use by a sandbox are skipped."""
        before = set(self._sizes())
        if remove_all:
            for key in sorted(before):
                try:
                    self.remove(key)
                except RuntimeUnavailableError as exc:
                    self._logger.warning(
                        "environment_evict_skipped", {"key": key, "error": str(exc)}
                    )
        else:
            self._evict(keep="")
        return sorted(before - set(self._sizes()))

    # -- LRU eviction -------------------------------------------------------------------------

    def _evict(self, keep: str) -> None:
        sizes = self._sizes()
        budget = self._config.max_total_mb * 1024 * 1024
        total = sum(sizes.values())
        if total <= budget:
            return
        by_age = sorted((key for key in sizes if key != keep), key=self._last_used)
        for key in by_age:
            if total <= budget:
                break
            try:
                self._client.remove_image(self._tag(key))
            except (DockerException, requests.RequestException) as exc:
                # In use by a container (the engine refuses) or already gone: skip it.
                self._logger.warning("environment_evict_skipped", {"key": key, "error": str(exc)})
                continue
            (self._root / "used" / key).unlink(missing_ok=True)
            total -= sizes[key]
            self._logger.info("environment_evicted", {"key": key, "size_bytes": sizes[key]})

    def _sizes(self) -> dict[str, int]:
        """Own size (without the base image's layers) of every environment image, by key."""
        try:
            images = self._client.images(name=self._config.repository, filters={"label": LABEL_KEY})
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc
        base = self._inspect(self._config.base_image)
        base_size = int(base.get("Size") or 0) if base else 0
        sizes: dict[str, int] = {}
        for image in images:
            key = (image.get("Labels") or {}).get(LABEL_KEY, "")
            if is_cache_key(key):
                sizes[key] = max(0, int(image.get("Size") or 0) - base_size)
        return sizes

    def _touch(self, key: str) -> None:
        stamp = self._root / "used" / key
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()

    def _last_used(self, key: str) -> float:
        try:
            return (self._root / "used" / key).stat().st_mtime
        except OSError:
            return 0.0  # never recorded: oldest

    # -- helpers ------------------------------------------------------------------------------

    def _tag(self, key: str) -> str:
        return f"{self._config.repository}:{key}"

    def _image_hash(self) -> str:
        if self._base_image_hash is None:
            image = self._inspect(self._config.base_image)
            if image is None:
                raise RuntimeUnavailableError(f"base image {self._config.base_image} is missing")
            self._base_image_hash = str(image["Id"]).removeprefix("sha256:")
        return self._base_image_hash

    def _inspect(self, reference: str) -> dict[str, Any] | None:
        try:
            return self._client.inspect_image(reference)  # type: ignore[no-any-return,no-untyped-call]
        except (ImageNotFound, NotFound):
            return None
        except (DockerException, requests.RequestException) as exc:
            raise RuntimeUnavailableError(f"Docker engine: {exc}") from exc

    def _built(self, key: str, image: dict[str, Any]) -> BuiltEnvironment:
        labels = (image.get("Config") or {}).get("Labels") or {}
        language = Language(key.split("-v", 1)[0])
        packages = tuple(labels.get(LABEL_PACKAGES, "").split())
        base = self._inspect(self._config.base_image)
        own = int(image.get("Size") or 0) - (int(base.get("Size") or 0) if base else 0)
        return BuiltEnvironment(
            key=key,
            environment=Environment(language, packages),
            reference=self._tag(key),
            size_bytes=max(0, own),
        )


def _pip_install_command(packages: tuple[str, ...]) -> list[str]:
    return [
        "python3", "-m", "pip", "install",
        "--no-index", "--find-links", WHEELS_MOUNT,
        # Debian marks its interpreter externally managed; these go to /usr/local, in front of
        # Debian's own packages on sys.path.
        "--break-system-packages",
        "--no-cache-dir", "--disable-pip-version-check", "--root-user-action=ignore",
        "--no-input", "--progress-bar", "off",
        "--", *packages,
    ]  # fmt: skip


def _copy_node_modules_command() -> list[str]:
    return ["cp", "-a", "--no-preserve=ownership", f"{NODE_MODULES_MOUNT}/.", NODE_GLOBAL_DIR]


_PIP_NOT_FOUND = re.compile(r"No matching distribution found for ([A-Za-z0-9._\-\[\]]+)")


def _failed_package(logs: str) -> str | None:
    match = _PIP_NOT_FOUND.search(logs)
    return match.group(1) if match else None


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
