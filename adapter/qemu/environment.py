"""L2 for QEMU: one qcow2 disk per environment key plus the memory snapshot of a VM booted from
it, with the S3 tier (L3) behind it.

- An entry is ``<qemu dir>/environments/<key>/{disk.qcow2,env.json}`` (adapter.qemu.envdisk),
  built in a VM with no network (adapter.qemu.environment_build). After the disk is in place a
  VM booted from it (read-only root, as every sandbox) is snapshotted, so chats of this
  environment restore in a fraction of a second with the interpreter warm; a snapshot that
  cannot be taken is logged and the environment's VMs boot cold.
- An entry whose backing file is missing or is not the current base image is removed and
  rebuilt. Size is the disk's own allocated size; use is the mtime of ``env.json``.
- L3: the disk itself is the artifact, ``snapshots/{key}.qcow2.zst`` (the memory snapshot is
  per host: it names this host's paths and QEMU build). A downloaded disk is re-pointed at this
  host's base image and checked by ``EnvironmentDisks.adopt``; an unfit one is discarded and
  the key built locally.
The way through the tiers, the per-key lock, LRU eviction and the background uploads are shared
with the Docker store (adapter.environment.tiered_store).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from adapter.environment.artifact_transfer import EnvironmentCacheObserver, staging_file
from adapter.environment.host_fetch import HostFetchConfig
from adapter.environment.tiered_store import TieredEnvironmentStore
from adapter.qemu.envdisk import EnvironmentDisk
from adapter.qemu.environment_build import QemuEnvironmentBuilder
from adapter.qemu.runtime import QemuSandboxRuntime
from domain.environment import ArtifactKind, BuiltEnvironment, Environment
from domain.errors import RuntimeUnavailableError
from domain.execution import Language
from usecase.ports import ArtifactStore, Logger

Progress = Callable[[str], None]


@dataclass(frozen=True)
class QemuEnvironmentConfig:
    service_version: str
    max_total_mb: int = 8192
    build_timeout_s: float = 900.0
    lock_timeout_s: float = 1800.0
    # Take the memory snapshot right after the build or download (a cold boot plus the
    # preloads: tens of seconds under TCG), so the first chat of the environment restores.
    snapshot: bool = True
    max_concurrent_uploads: int = 2
    fetch: HostFetchConfig = field(default_factory=HostFetchConfig)


class QemuEnvironmentStore(TieredEnvironmentStore):
    """EnvironmentStore port on QEMU qcow2 disks; see the module docstring."""

    def __init__(
        self,
        runtime: QemuSandboxRuntime,
        config: QemuEnvironmentConfig,
        logger: Logger,
        progress: Progress = lambda _message: None,
        artifacts: ArtifactStore | None = None,
        observer: EnvironmentCacheObserver | None = None,
    ) -> None:
        self._runtime = runtime
        self._config = config
        self._disks = runtime.environment_disks
        root = self._disks.root
        super().__init__(root, ArtifactKind.SNAPSHOT, config, logger, artifacts, observer)
        self._builder = QemuEnvironmentBuilder(
            runtime, config.fetch, config.build_timeout_s, logger, progress
        )

    def key_for(self, environment: Environment) -> str:
        return environment.cache_key(self._config.service_version, self._runtime.image().image_hash)

    def _base(self, environment: Environment, key: str) -> BuiltEnvironment:
        return BuiltEnvironment(key, environment, str(self._runtime.image().base), 0)

    def _find_local(self, key: str) -> BuiltEnvironment | None:
        entry, reason = self._disks.load(key, self._runtime.image().base)
        if entry is None:
            if reason != "missing":
                # A disk over a base that is gone or another one would not boot (or would boot
                # the wrong files): drop it, the next ensure rebuilds it.
                self._logger.warning("environment_invalid", {"key": key, "reason": reason})
                self._disks.remove(key)
            return None
        return _built(entry)

    def _build(self, environment: Environment, key: str) -> BuiltEnvironment:
        entry = self._builder.build(environment, key, self._runtime.image().base)
        self._snapshot(key)
        return _built(entry)

    def _load_artifact(
        self, environment: Environment, key: str, artifact: Path
    ) -> BuiltEnvironment:
        base = self._runtime.image().base
        entry = self._disks.adopt(
            key, artifact, base, environment.language.value, environment.packages
        )
        self._snapshot(key)
        return _built(entry)

    @contextmanager
    def _artifact_file(self, key: str) -> Iterator[Path]:
        # A link of its own: an eviction meanwhile removes the entry, not what is being read.
        with staging_file(self._disks.root, key, "upload", ".qcow2") as upload:
            disk = self._disks.directory(key) / "disk.qcow2"
            try:
                os.link(disk, upload)
            except OSError:
                shutil.copyfile(disk, upload)
            yield upload

    def _remove_leftovers(self, key: str) -> None:
        self._builder.remove_leftovers(key)

    def _inventory(self) -> list[BuiltEnvironment]:
        found = []
        for key in self._disks.list_keys():
            entry, _reason = self._disks.read(key)
            if entry is not None:
                found.append(_built(entry))
        return found

    def _touch(self, key: str) -> None:
        self._disks.touch(key)

    def _last_used(self, key: str) -> float:
        return self._disks.last_used(key)

    def _remove_local(self, key: str) -> None:
        # Running VMs keep their open disk (QEMU holds descriptors); new ones rebuild it.
        self._disks.remove(key)

    def _snapshot(self, key: str) -> None:
        if not self._config.snapshot:
            return
        try:
            self._runtime.prepare_snapshot(environment_key=key)
        except RuntimeUnavailableError as exc:
            self._logger.warning("environment_snapshot_failed", {"key": key, "error": str(exc)})


def _built(entry: EnvironmentDisk) -> BuiltEnvironment:
    return BuiltEnvironment(
        key=entry.key,
        environment=Environment(Language(entry.language), entry.packages),
        reference=str(entry.disk),
        size_bytes=entry.size_bytes,
    )
