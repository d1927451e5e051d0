"""Files of a chat's workspace: upload, download, list, delete, under the chat's lock."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from uuid import UUID

from domain.errors import SandboxGoneError
from domain.files import StoredFile, WorkspaceListing, check_workspace_path
from domain.sandbox import SandboxSession
from domain.tenant import OPERATOR, Caller
from usecase.ports import (
    Clock,
    Logger,
    SandboxFileStore,
    SandboxLifecycleLocker,
    SandboxRuntime,
    SandboxSessionRepository,
)
from usecase.sandbox import (
    Lifetime,
    SandboxProvisioner,
    check_access,
    not_found,
    session_attrs,
)

# Opens the upload's content from its start; called again if the sandbox had to be replaced.
ChunkSource = Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class FileLimits:
    max_file_bytes: int = 100 * 1024 * 1024


class WorkspaceFiles:
    """The four file operations of a chat, each one under the chat's lock.

    Rules:
    - Paths are checked first (relative, no '..'); the agent checks again where it opens the file,
      without following symlinks, which is what holds against links planted by user code.
    - An upload to a chat without a usable sandbox creates one, as an execution does; if the
      sandbox turns out gone, it is replaced once and the upload sent again from its start.
    - Download, list and delete need the chat's sandbox: without one there are no files
      (SandboxNotFoundError); a gone sandbox is marked so by the next execution, not here.
    - Each operation slides the idle deadline like an execution.
    - A chat belongs to the key that created it: another tenant's chat is reported exactly as a
      chat without a sandbox (SandboxNotFoundError), before its sandbox is touched; an upload
      never creates, replaces or writes into it. Admins reach every chat without taking it over.
    """

    def __init__(
        self,
        repository: SandboxSessionRepository,
        locker: SandboxLifecycleLocker,
        runtime: SandboxRuntime,
        files: SandboxFileStore,
        clock: Clock,
        logger: Logger,
        lifetime: Lifetime,
        limits: FileLimits | None = None,
        provisioner: SandboxProvisioner | None = None,
    ) -> None:
        self._repository = repository
        self._locker = locker
        self._files = files
        self._clock = clock
        self._logger = logger
        self._lifetime = lifetime
        self._limits = limits or FileLimits()
        # The service's one provisioner (pools, capacity caps, placement apply to an upload that
        # creates the chat's sandbox as to an execution); a bare one otherwise.
        self._provisioner = provisioner or SandboxProvisioner(
            repository, runtime, clock, logger, lifetime
        )

    @property
    def max_file_bytes(self) -> int:
        return self._limits.max_file_bytes

    def upload(
        self, chat_id: UUID, path: str, source: ChunkSource, caller: Caller = OPERATOR
    ) -> StoredFile:
        check_workspace_path(path)
        limit = self._limits.max_file_bytes
        with self._locker.lock(chat_id):
            session = self._provisioner.ensure(chat_id, caller=caller).session
            try:
                stored = self._files.write_file(session.container_id, path, source(), limit)
            except SandboxGoneError:
                self._logger.warning("sandbox_found_dead", session_attrs(session))
                session = self._provisioner.replace(session)
                stored = self._files.write_file(session.container_id, path, source(), limit)
            self._renew(session)
        self._logger.info(
            "file_uploaded", {**session_attrs(session), "path": path, "size": stored.size}
        )
        return stored

    def download(
        self,
        chat_id: UUID,
        path: str,
        sink: Callable[[bytes], object],
        caller: Caller = OPERATOR,
    ) -> StoredFile:
        check_workspace_path(path)
        with self._locker.lock(chat_id):
            session = self._current(chat_id, caller)
            stored = self._files.read_file(session.container_id, path, sink)
            self._renew(session)
        self._logger.info(
            "file_downloaded", {**session_attrs(session), "path": path, "size": stored.size}
        )
        return stored

    def list(self, chat_id: UUID, prefix: str = "", caller: Caller = OPERATOR) -> WorkspaceListing:
        with self._locker.lock(chat_id):
            session = self._current(chat_id, caller)
            listing = self._files.list_files(session.container_id, prefix)
            self._renew(session)
        self._logger.info("files_listed", {**session_attrs(session), "count": len(listing.entries)})
        return listing

    def delete(self, chat_id: UUID, path: str, caller: Caller = OPERATOR) -> None:
        check_workspace_path(path)
        with self._locker.lock(chat_id):
            session = self._current(chat_id, caller)
            self._files.delete_file(session.container_id, path)
            self._renew(session)
        self._logger.info("file_deleted", {**session_attrs(session), "path": path})

    def _current(self, chat_id: UUID, caller: Caller) -> SandboxSession:
        session = check_access(self._repository.get_active_by_chat_id(chat_id), caller)
        if session is None or not session.is_usable(self._clock.now()):
            raise not_found(chat_id)
        self._provisioner.check_node(session)
        return session

    def _renew(self, session: SandboxSession) -> None:
        self._repository.save(session.renewed(self._clock.now(), self._lifetime.ttl))
