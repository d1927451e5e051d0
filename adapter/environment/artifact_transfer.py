"""L3 behind an L2 store: background uploads of built environments, downloads on a local miss.

Shared by the Docker and QEMU environment stores; only the artifact differs (what
``artifact_file`` yields: a tar of an image's own layer, a qcow2 disk) and how a downloaded file
becomes an L2 entry (the ``load`` callable of ``download``).

Rules:
- The artifact store never fails a request: a failed download is logged
  (``environment_download_failed``) and the caller builds locally; so is a downloaded file that
  the L2 refuses (corrupt, or not over this host's base).
- After a local build the key is marked pending (``<root>/pending-upload/<key>``) and uploaded in
  the background, at most ``max_concurrent_uploads`` at once (the S3 store bounds its own
  transfers too). A failed upload is logged (``environment_upload_failed``) and stays pending;
  ``retry_uploads`` (the service's sweep) tries again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from domain.environment import ArtifactKind, BuiltEnvironment, is_cache_key
from domain.errors import (
    ArtifactStoreUnavailableError,
    EnvironmentBuildError,
    RuntimeUnavailableError,
)
from usecase.ports import ArtifactStore, Logger

# The file to upload for a key, valid while the context is open.
ArtifactFile = Callable[[str], AbstractContextManager[Path]]


class EnvironmentCacheObserver(Protocol):
    """Where a store reports its cache outcomes (the service's metrics)."""

    def cache_hit(self, level: str) -> None:
        """``l2`` (local), ``l3`` (artifact store) or ``miss`` (built)."""
        ...

    def built(self, seconds: float) -> None: ...

    def downloaded(self, seconds: float) -> None:
        """An L3 hit: download, decompress and load into L2."""
        ...


class NoObserver:
    def cache_hit(self, level: str) -> None:
        pass

    def built(self, seconds: float) -> None:
        pass

    def downloaded(self, seconds: float) -> None:
        pass


class ArtifactTransfer:
    """Moves one store's environments between its L2 (under ``root``) and an ArtifactStore."""

    def __init__(
        self,
        artifacts: ArtifactStore | None,
        kind: ArtifactKind,
        root: Path,
        logger: Logger,
        observer: EnvironmentCacheObserver,
        artifact_file: ArtifactFile,
        max_concurrent_uploads: int = 2,
    ) -> None:
        self._artifacts = artifacts if artifacts is not None and artifacts.enabled else None
        self._kind = kind
        self._root = root
        self._logger = logger
        self._observer = observer
        self._artifact_file = artifact_file
        self._max_uploads = max(1, max_concurrent_uploads)
        self._uploader: ThreadPoolExecutor | None = None
        self._uploader_lock = threading.Lock()

    def download(
        self, key: str, load: Callable[[Path], BuiltEnvironment]
    ) -> BuiltEnvironment | None:
        """Fetch the key and hand the decompressed file to ``load`` (which makes it an L2 entry);
        None when there is no artifact store, no such object, or anything fails."""
        if self._artifacts is None:
            return None
        started = time.monotonic()
        suffix = self._kind.object_name_suffix.removesuffix(".zst")
        try:
            with staging_file(self._root, key, "download", suffix) as archive:
                if not self._artifacts.download(self._kind, key, archive):
                    return None
                built = load(archive)
        except (
            ArtifactStoreUnavailableError,
            RuntimeUnavailableError,
            EnvironmentBuildError,
            OSError,
        ) as exc:
            self._logger.warning(
                "environment_download_failed", {"key": key, "error": str(exc)[:300]}
            )
            return None
        seconds = time.monotonic() - started
        self._observer.downloaded(seconds)
        self._logger.info(
            "environment_downloaded",
            {"key": key, "size_bytes": built.size_bytes, "duration_s": round(seconds, 3)},
        )
        return built

    def schedule_upload(self, key: str) -> None:
        if self._artifacts is None:
            return
        self._pending_dir().mkdir(parents=True, exist_ok=True)
        (self._pending_dir() / key).touch()
        with self._uploader_lock:
            if self._uploader is None:
                self._uploader = ThreadPoolExecutor(
                    self._max_uploads, thread_name_prefix="sandboxd-env-upload"
                )
            self._uploader.submit(self._upload, key)

    def retry_uploads(self, present: Callable[[str], bool]) -> int:
        """Upload every pending key still ``present`` locally; returns how many went up."""
        if self._artifacts is None:
            return 0
        done = 0
        for marker in sorted(self._pending_dir().glob("*")):
            key = marker.name
            if not is_cache_key(key) or not present(key):
                marker.unlink(missing_ok=True)  # evicted meanwhile: nothing to upload
                continue
            done += self._upload(key)
        return done

    def wait_for_uploads(self) -> None:
        """Finish the background uploads under way (tests, CLI builds, shutdown)."""
        with self._uploader_lock:
            uploader, self._uploader = self._uploader, None
        if uploader is not None:
            uploader.shutdown(wait=True)

    def contains(self, key: str) -> bool | None:
        """Whether L3 has the key (None: no artifact store, or it cannot be reached)."""
        if self._artifacts is None:
            return None
        try:
            return self._artifacts.exists(self._kind, key)
        except ArtifactStoreUnavailableError:
            return None

    def keys(self) -> list[str] | None:
        """Keys in the artifact store (None: no artifact store, or it cannot be reached)."""
        if self._artifacts is None:
            return None
        try:
            return self._artifacts.list_keys(self._kind)
        except ArtifactStoreUnavailableError:
            return None

    def _upload(self, key: str) -> bool:
        assert self._artifacts is not None
        started = time.monotonic()
        try:
            with self._artifact_file(key) as source:
                self._artifacts.upload(self._kind, key, source)
        except Exception as exc:
            # Logged and left pending for the next sweep; never raised to anyone's request.
            self._logger.warning("environment_upload_failed", {"key": key, "error": str(exc)[:300]})
            return False
        (self._pending_dir() / key).unlink(missing_ok=True)
        self._logger.info(
            "environment_uploaded",
            {"key": key, "duration_s": round(time.monotonic() - started, 3)},
        )
        return True

    def _pending_dir(self) -> Path:
        return self._root / "pending-upload"


@contextmanager
def staging_file(root: Path, key: str, purpose: str, suffix: str) -> Iterator[Path]:
    """A fresh path under ``<root>/staging`` for one transfer, removed afterwards."""
    staging = root / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / f"{key}-{purpose}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
