"""Ports the use cases depend on. Adapters and repositories implement them.

Every port method may raise the project's own errors (``domain.errors``) and nothing else on
purpose; an adapter that lets a library exception escape has a bug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable
from uuid import UUID

from domain.environment import ArtifactKind, BuiltEnvironment, Environment
from domain.execution import ExecutionRequest, ExecutionResult, OutputChunk
from domain.files import StoredFile, WorkspaceListing
from domain.pool import PoolDefinition
from domain.sandbox import CapScope, ManagedSandbox, SandboxCaps, SandboxSession, SandboxStatus

LogAttrs = Mapping[str, str | int | float | bool]
OutputSink = Callable[[OutputChunk], None]


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC. The only source of time in use cases."""
        ...


class Logger(Protocol):
    """Structured logger: ``message`` is a snake_case event name, ``attrs`` its context."""

    def debug(self, message: str, attrs: LogAttrs | None = None) -> None: ...

    def info(self, message: str, attrs: LogAttrs | None = None) -> None: ...

    def warning(self, message: str, attrs: LogAttrs | None = None) -> None: ...

    def error(self, message: str, attrs: LogAttrs | None = None) -> None: ...


class SandboxLifecycleLocker(Protocol):
    def lock(self, chat_id: UUID) -> AbstractContextManager[None]:
        """Context manager holding the chat's lifecycle lock.

        Mutual exclusion per chat across every caller that shares this locker's scope (a process,
        a host, or every replica on one database). Waiters get the lock in arrival order where
        the backend allows (process-local: strictly FIFO). Released on exit, also on exception.
        Raises LockTimeoutError if the implementation bounds the wait and it runs out,
        RepositoryUnavailableError if a database-backed lock cannot reach its database.
        """
        ...


class SweepLeader(Protocol):
    """Elects the one sweeper (expiry cleanup and reconciliation) among the replicas."""

    def try_lead(self) -> AbstractContextManager[bool]:
        """Yield True while this caller is the one sweeper, False at once if another is."""
        ...


class SandboxSessionRepository(Protocol):
    """Session records. Each call is its own transaction.

    At most one *current* record (RUNNING or DEAD) exists per chat; saving a second one for the
    same chat under another session id raises SandboxServiceError. Raises
    RepositoryUnavailableError when the store cannot be reached; nothing is half-written then.
    """

    def save(self, session: SandboxSession) -> None:
        """Insert or replace the record with this session id (upsert)."""
        ...

    def get(self, session_id: UUID) -> SandboxSession | None: ...

    def save_within(self, session: SandboxSession, caps: SandboxCaps) -> CapScope | None:
        """Insert a new chat's record only if its node and owner stay within ``caps`` (RUNNING
        records of ``session.node``, and of ``session.owner`` there, counted without it); None
        when saved, else the scope that is full. Counting and inserting are one step: creates
        racing on any replica never pass a cap together."""
        ...

    def get_many(self, session_ids: Iterable[UUID]) -> list[SandboxSession]:
        """The records with these session ids that exist (any order): one read for many."""
        ...

    def get_active_by_chat_id(self, chat_id: UUID) -> SandboxSession | None:
        """The chat's current record, RUNNING or DEAD, expired or not; None when it has none."""
        ...

    def list_expired(self, now: datetime) -> list[SandboxSession]:
        """RUNNING and DEAD records with ``expires_at <= now``, oldest deadline first."""
        ...

    def list_sessions(
        self,
        status: SandboxStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        owner: str | None = None,
    ) -> list[SandboxSession]:
        """Records ordered by creation time (then session id), optionally of one status and of
        one owner (tenant)."""
        ...

    def count_running(self, node: str, owner: str | None = None) -> int:
        """RUNNING records of ``node`` (expired ones included: their sandboxes still hold
        memory until swept), optionally of one owner. Read from the store, so every replica
        sharing it counts the same sandboxes."""
        ...

    def delete(self, session_id: UUID) -> None:
        """Remove the record; idempotent (an unknown id is fine)."""
        ...


class SandboxRuntime(Protocol):
    """Creates, runs code in, and stops sandboxes (containers or microVMs).

    Raises RuntimeUnavailableError when the engine cannot be reached or refuses an operation.
    """

    def create(
        self, *, session_id: UUID, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession:
        """Start a sandbox labelled with the session and chat ids; return its RUNNING session.

        Returns only once the guest agent answers. On failure nothing is left running.
        """
        ...

    def stop(self, container_id: str) -> None:
        """Stop and remove the sandbox; idempotent (a missing object is fine)."""
        ...

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        """Run code through the sandbox's agent; stream output chunks to ``on_output`` if given.

        A timeout is a result (``timed_out``), not an error. Raises SandboxGoneError when the
        sandbox no longer exists or its agent died; the caller decides whether to replace it.
        """
        ...

    def is_alive(self, container_id: str) -> bool:
        """True when the object exists and is running."""
        ...

    def list_managed(self) -> list[ManagedSandbox]:
        """Every object this service instance manages (found by its labels), alive or not."""
        ...


@runtime_checkable
class SandboxKiller(Protocol):
    """Optional SandboxRuntime capability: end a sandbox now, remove its object later.

    For the expiry sweep, where waiting for the engine to stop each object one by one turns a
    backlog into minutes. When ``kill`` returns, no code of the sandbox runs any more; the object
    itself is removed by the runtime in the background, and if that is lost (a crash) by
    reconciliation, which removes objects no record points at. Idempotent like ``stop``.
    """

    def kill(self, container_id: str) -> None: ...


class SandboxFileStore(Protocol):
    """Files of a sandbox's workspace, through its agent (a port of its own: the runtime port's
    shape is fixed by the contract). Paths are relative to the workspace; the agent resolves
    them inside the sandbox without following symlinks.

    Raises FilePathRefusedError (absolute, '..', through a symlink or a file),
    WorkspaceFileNotFoundError, FileTooLargeError (past ``max_bytes``; nothing written),
    WorkspaceFullError (nothing written), SandboxGoneError (the sandbox or its agent is gone).
    """

    def write_file(
        self, container_id: str, path: str, chunks: Iterable[bytes], max_bytes: int
    ) -> StoredFile:
        """Write atomically (a temporary file renamed over the target), owned by the sandbox
        user; the chunks are consumed once, as they come."""
        ...

    def read_file(
        self, container_id: str, path: str, sink: Callable[[bytes], object]
    ) -> StoredFile:
        """Stream a regular file's content to ``sink`` in chunks."""
        ...

    def list_files(self, container_id: str, prefix: str) -> WorkspaceListing:
        """Regular files whose path starts with ``prefix`` (bounded; truncation said)."""
        ...

    def delete_file(self, container_id: str, path: str) -> None: ...


class EnvironmentStore(Protocol):
    """L2: environments built on this host, one per cache key (a Docker image, a qcow2 disk).

    Rules: packages are fetched by the host as built artifacts only (wheels, npm tarballs) and
    installed inside an isolated build sandbox with no network; no package code runs on the
    host. A key is built at most once at a time across processes of this host (per-key file
    lock); a failed build leaves nothing behind under the key. Past the configured size budget
    the least recently used environments are evicted (never the one just built or found).
    """

    def key_for(self, environment: Environment) -> str:
        """The cache key of this environment over this store's base image (builds nothing)."""
        ...

    def find(self, key: str) -> BuiltEnvironment | None:
        """The environment under ``key`` when present locally; marks it recently used."""
        ...

    def ensure(self, environment: Environment) -> BuiltEnvironment:
        """Find or build the environment; return it ready for the runtime.

        Raises EnvironmentBuildError (naming the package when known) when a package has no
        installable artifact or its install fails, RuntimeUnavailableError when the engine
        refuses.
        """
        ...

    def remove(self, key: str) -> None:
        """Drop the environment; idempotent. Sandboxes already running from it are unaffected."""
        ...


class ArtifactStore(Protocol):
    """L3: built environments shared between hosts (S3), zstd-compressed, one object per key.

    Object keys are ``images/{key}.tar.zst`` and ``snapshots/{key}.qcow2.zst``. Transfers stream
    (no whole artifact in memory) and an interrupted transfer leaves no object and no local file.
    When the store is not configured it is off: every call raises ArtifactStoreUnavailableError
    saying so. Every backend failure is an ArtifactStoreUnavailableError too (logged).
    """

    @property
    def enabled(self) -> bool:
        """False when no bucket is configured (calls would raise)."""
        ...

    def upload(self, kind: ArtifactKind, key: str, source: Path) -> None:
        """Compress and store the file; replaces an existing object atomically."""
        ...

    def download(self, kind: ArtifactKind, key: str, destination: Path) -> bool:
        """Fetch and decompress into ``destination``; False when there is no such object."""
        ...

    def exists(self, kind: ArtifactKind, key: str) -> bool: ...

    def list_keys(self, kind: ArtifactKind) -> list[str]:
        """Cache keys stored under the kind's prefix (objects of other shapes are skipped)."""
        ...

    def delete(self, kind: ArtifactKind, key: str) -> None:
        """Remove the object; idempotent."""
        ...


class EnvironmentRuntime(Protocol):
    """What a runtime needs beyond SandboxRuntime to serve package environments (optional: the
    base environment goes through ``SandboxRuntime.create`` exactly as without packages).

    Same errors as SandboxRuntime; package failures are EnvironmentBuildError.
    """

    def create_from(
        self,
        environment: BuiltEnvironment,
        *,
        session_id: UUID,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
    ) -> SandboxSession:
        """As SandboxRuntime.create, from the environment's image (``environment.reference``)."""
        ...

    def install_packages(self, container_id: str, environment: Environment) -> None:
        """Install the environment's packages into the running sandbox, keeping its state.

        The host fetches built artifacts only; the sandbox installs them offline. Afterwards code
        in the sandbox imports them without a restart.
        """


class SandboxHealthProbe(Protocol):
    """Asks a sandbox's agent whether it answers (a frozen sandbox does not)."""

    def ping(self, container_id: str, timeout_s: float) -> bool:
        """True when the agent answered within ``timeout_s``; never raises."""
        ...


class WarmSandboxSource(Protocol):
    """Agent-ready sandboxes started ahead of need (the warm pools).

    ``claim`` hands out a pooled sandbox in O(1), already bound to the chat (its session id is
    the member's, kept), or None when no pool serves exactly these packages (in the form
    sessions record them; none: the base environment) or the pool is empty; a member is handed
    out at most once, and it records its packages already. The caller saves the record and then
    calls ``settle``; until then reconciliation still counts the member as owned by the pool.
    """

    def claim(
        self,
        *,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
        packages: tuple[str, ...] = (),
    ) -> SandboxSession | None: ...

    def settle(self, session_id: UUID) -> None: ...

    def give_back(self, session_id: UUID) -> None:
        """A claimed member whose chat was refused (a cap) before its record was saved: back to
        its pool as idle, first in line (no code of the chat ever ran in it)."""
        ...

    def make_room(self) -> None:
        """Before a sandbox is created on demand: free the room pool members hold in the
        host's cap if the new one would not fit (chats come before warm members)."""
        ...

    def owns(self, session_id: UUID) -> bool:
        """True while the sandbox with this session id is a pool member not yet given to a chat
        (starting, idle, or being claimed)."""
        ...


class PoolRepository(Protocol):
    """Pool definitions, shared by the replicas through the database. Each call a transaction."""

    def list_pools(self) -> list[PoolDefinition]:
        """All definitions, by name."""
        ...

    def get_pool(self, name: str) -> PoolDefinition | None: ...

    def add_pool(self, definition: PoolDefinition) -> None:
        """Insert; raises PoolAlreadyExistsError when the name is taken."""
        ...

    def update_pool(self, definition: PoolDefinition) -> None:
        """Replace the definition with this name; raises PoolNotFoundError when absent."""
        ...

    def delete_pool(self, name: str) -> bool:
        """Remove; False when there was no such pool."""
        ...


class SandboxRebinder(Protocol):
    """Hands a pooled sandbox over to the chat that claimed it (runtimes that need it)."""

    def rebind(self, session: SandboxSession) -> None:
        """Record the new owner where the runtime keeps it (it may finish that after returning:
        the session record is the binding). Raises SandboxGoneError or RuntimeUnavailableError
        when the member cannot be handed over; the caller then discards it and creates a
        sandbox on demand."""
        ...
