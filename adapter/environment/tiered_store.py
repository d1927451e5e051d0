"""What the Docker and QEMU environment stores share: the way through the tiers, the per-key
build lock, LRU eviction and the operations behind ``sandboxd env``.

``ensure`` of a package environment: a local (L2) hit is used as is; otherwise, under the key's
file lock (``<root>/locks/<key>.lock``, so builders on this host, threads, processes and CLIs,
make it once and the others wait and find it), the store looks again, clears what a crashed
builder left, asks the artifact store (L3, see adapter.environment.artifact_transfer) and only
then builds, scheduling an upload of what it built. Past ``max_total_mb`` the least recently
used entries are evicted, never the one just made; an entry the runtime refuses to remove (a
Docker image in use) is skipped. The base environment (no packages) is the base image itself and
is never built, uploaded or evicted.

A subclass is the local tier: it says how an entry is found, built, loaded from a downloaded
artifact, exported as one, sized, stamped as used and removed.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from filelock import FileLock, Timeout

from adapter.environment.artifact_transfer import (
    ArtifactTransfer,
    EnvironmentCacheObserver,
    NoObserver,
)
from domain.environment import ArtifactKind, BuiltEnvironment, Environment, is_cache_key
from domain.errors import EnvironmentBuildError, RuntimeUnavailableError
from usecase.ports import ArtifactStore, Logger


class CacheLimits(Protocol):
    """What both stores' configurations say about the cache."""

    @property
    def max_total_mb(self) -> int: ...

    @property
    def lock_timeout_s(self) -> float: ...

    @property
    def max_concurrent_uploads(self) -> int: ...


class TieredEnvironmentStore(ABC):
    """EnvironmentStore port over a local tier (the subclass) and an optional artifact store."""

    def __init__(
        self,
        root: Path,
        kind: ArtifactKind,
        limits: CacheLimits,
        logger: Logger,
        artifacts: ArtifactStore | None,
        observer: EnvironmentCacheObserver | None,
    ) -> None:
        self._root = root
        self._logger = logger
        self._max_total_mb = limits.max_total_mb
        self._lock_timeout_s = limits.lock_timeout_s
        self._observer = observer or NoObserver()
        self._transfer = ArtifactTransfer(
            artifacts,
            kind,
            root,
            logger,
            self._observer,
            self._artifact_file,
            limits.max_concurrent_uploads,
        )

    # -- the local tier (subclasses) -----------------------------------------------------------

    @abstractmethod
    def key_for(self, environment: Environment) -> str: ...

    @abstractmethod
    def _base(self, environment: Environment, key: str) -> BuiltEnvironment:
        """The base environment (the base image itself); raises when it is missing."""

    @abstractmethod
    def _find_local(self, key: str) -> BuiltEnvironment | None:
        """The valid entry, or None (an invalid one is dropped on the way)."""

    @abstractmethod
    def _build(self, environment: Environment, key: str) -> BuiltEnvironment:
        """Build the entry in an isolated sandbox with no network; leave nothing on failure."""

    @abstractmethod
    def _load_artifact(
        self, environment: Environment, key: str, artifact: Path
    ) -> BuiltEnvironment:
        """Make a downloaded artifact the entry; raise (and leave nothing) when it is unfit."""

    @abstractmethod
    def _artifact_file(self, key: str) -> AbstractContextManager[Path]:
        """The entry as the file to upload, valid while the context is open."""

    @abstractmethod
    def _remove_leftovers(self, key: str) -> None:
        """What a crashed builder of the key left; called under the key's lock."""

    @abstractmethod
    def _inventory(self) -> list[BuiltEnvironment]:
        """Every local entry (with its own size), not marked as used."""

    @abstractmethod
    def _touch(self, key: str) -> None: ...

    @abstractmethod
    def _last_used(self, key: str) -> float:
        """Epoch seconds; 0.0 when never recorded (oldest)."""

    @abstractmethod
    def _remove_local(self, key: str) -> None:
        """Remove the entry; RuntimeUnavailableError when the runtime refuses."""

    # -- port ---------------------------------------------------------------------------------

    def find(self, key: str) -> BuiltEnvironment | None:
        if not is_cache_key(key) or key.endswith("-base"):
            return None  # the base has no entry; ensure() answers for it
        found = self._find_local(key)
        if found is not None:
            self._touch(key)
        return found

    def ensure(self, environment: Environment) -> BuiltEnvironment:
        key = self.key_for(environment)
        if environment.is_base:
            return self._base(environment, key)
        found = self._found(key, after_wait=False)
        if found is not None:
            return found
        lock_path = self._root / "locks" / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock_path), timeout=self._lock_timeout_s):
                found = self._found(key, after_wait=True)  # made by another while we waited
                if found is not None:
                    return found
                self._remove_leftovers(key)
                built = self._transfer.download(
                    key, lambda artifact: self._load_artifact(environment, key, artifact)
                )
                if built is not None:
                    self._observer.cache_hit("l3")
                else:
                    self._observer.cache_hit("miss")
                    built = self._timed_build(environment, key)
                    self._transfer.schedule_upload(key)
                self._touch(key)
        except Timeout as exc:
            raise EnvironmentBuildError(f"timed out waiting for the build of {key}") from exc
        self._evict(keep=key)
        return built

    def remove(self, key: str) -> None:
        if not is_cache_key(key) or key.endswith("-base"):
            return
        self._remove_local(key)
        self._logger.info("environment_removed", {"key": key})

    def list_keys(self) -> list[str]:
        """Keys of every local environment of this store (any base image)."""
        return sorted(self._sizes())

    # -- operations (sandboxd env, the sweep) -------------------------------------------------

    def retry_uploads(self) -> int:
        """Upload every key whose upload failed before (the sweep calls this); returns how many
        went up."""
        return self._transfer.retry_uploads(lambda key: self._find_local(key) is not None)

    def wait_for_uploads(self) -> None:
        """Finish the background uploads under way (tests, CLI builds, shutdown)."""
        self._transfer.wait_for_uploads()

    def in_artifact_store(self, key: str) -> bool | None:
        """Whether L3 has the key (None: no artifact store, or it cannot be reached)."""
        return self._transfer.contains(key)

    def artifact_keys(self) -> list[str] | None:
        """Keys in the artifact store (None: no artifact store, or it cannot be reached)."""
        return self._transfer.keys()

    def inventory(self) -> list[tuple[BuiltEnvironment, float]]:
        """Every local environment with when it was last used; marks none as used."""
        found = [(built, self._last_used(built.key)) for built in self._inventory()]
        return sorted(found, key=lambda item: item[0].key)

    def prune(self, remove_all: bool = False) -> list[str]:
        """Evict down to the size budget (least recently used first), or remove every
        environment; returns the keys removed. Entries the runtime refuses to remove (in use)
        are skipped."""
        if not remove_all:
            return self._evict(keep="")
        removed = []
        for key in sorted(self._sizes()):
            if self._remove_or_skip(key):
                self._logger.info("environment_removed", {"key": key})
                removed.append(key)
        return removed

    # -- internals ----------------------------------------------------------------------------

    def _sizes(self) -> dict[str, int]:
        return {built.key: built.size_bytes for built in self._inventory()}

    def _found(self, key: str, after_wait: bool) -> BuiltEnvironment | None:
        found = self.find(key)
        if found is not None:
            attrs: dict[str, str | bool] = {"key": key}
            if after_wait:
                attrs["after_wait"] = True
            self._logger.info("environment_found", attrs)
            self._observer.cache_hit("l2")
        return found

    def _timed_build(self, environment: Environment, key: str) -> BuiltEnvironment:
        started = time.monotonic()
        try:
            built = self._build(environment, key)
        except (EnvironmentBuildError, RuntimeUnavailableError, OSError) as exc:
            package = exc.package if isinstance(exc, EnvironmentBuildError) else None
            self._logger.error(
                "environment_build_failed",
                {"key": key, "package": package or "", "error": str(exc)[:500]},
            )
            if isinstance(exc, OSError):
                raise RuntimeUnavailableError(f"environment build of {key}: {exc}") from exc
            raise
        seconds = time.monotonic() - started
        self._observer.built(seconds)
        self._logger.info(
            "environment_built",
            {
                "key": key,
                "packages": " ".join(environment.packages),
                "size_bytes": built.size_bytes,
                "duration_s": round(seconds, 3),
            },
        )
        return built

    def _evict(self, keep: str) -> list[str]:
        sizes = self._sizes()
        budget = self._max_total_mb * 1024 * 1024
        total = sum(sizes.values())
        evicted = []
        for key in sorted((k for k in sizes if k != keep), key=self._last_used):
            if total <= budget:
                break
            if self._remove_or_skip(key):
                total -= sizes[key]
                evicted.append(key)
                self._logger.info("environment_evicted", {"key": key, "size_bytes": sizes[key]})
        return evicted

    def _remove_or_skip(self, key: str) -> bool:
        try:
            self._remove_local(key)
        except RuntimeUnavailableError as exc:
            # In use by a sandbox (the engine refuses) or the engine is away: skip it.
            self._logger.warning("environment_evict_skipped", {"key": key, "error": str(exc)})
            return False
        return True
