"""The project's error tree. Adapters wrap library exceptions into these (``raise ... from``);
each entrypoint maps them to status codes in one table."""


class SandboxServiceError(Exception):
    """Base of every error this service raises on purpose."""


class InvalidInputError(SandboxServiceError):
    """The caller sent something we will not run; nothing was changed."""


class InvalidChatIdError(InvalidInputError):
    pass


class CodeTooLargeError(InvalidInputError):
    pass


class UnsupportedLanguageError(InvalidInputError):
    pass


class InvalidTimeoutError(InvalidInputError):
    pass


class SandboxNotFoundError(SandboxServiceError):
    """The chat has no usable sandbox (for get and renew)."""


class SandboxGoneError(SandboxServiceError):
    """The runtime object behind a session is gone or its agent stopped answering."""


class RuntimeUnavailableError(SandboxServiceError):
    """The sandbox runtime (Docker engine, QEMU) cannot be reached or refused the operation."""


class RepositoryUnavailableError(SandboxServiceError):
    """The session store cannot be reached; the current step was rolled back."""


class StorageFullError(RepositoryUnavailableError):
    """The service's own storage (its data directory's disk, or the database server's) has no
    space left: the write was refused and rolled back, nothing is half-written. Reads still
    work; writes work again once space is freed, without a restart."""


class LockTimeoutError(SandboxServiceError):
    """The chat's lifecycle lock could not be taken in time."""


class LockLostError(SandboxServiceError):
    """The chat's lock was lost while held (its database connection dropped): the state change
    was refused, since another replica may be working on the chat now. Retry."""


class SessionConflictError(SandboxServiceError):
    """A second current session for one chat: the store's one-per-chat rule was broken."""


class TooManyExecutionsError(SandboxServiceError):
    """The service is at its limit of executions in flight; retry later."""


class InvalidPackageError(InvalidInputError):
    """A package requirement of an environment is not a plain registry name (+ version): URLs,
    paths, pip/npm options and odd characters are refused before anything is fetched."""

    def __init__(self, requirement: str, reason: str) -> None:
        super().__init__(f"package {requirement!r} refused: {reason}")
        self.requirement = requirement
        self.reason = reason


class PackageNotAllowedError(SandboxServiceError):
    """A package is not on the service's allow-list (SANDBOXD_PACKAGE_ALLOWLIST)."""


class EnvironmentBuildError(SandboxServiceError):
    """An environment could not be built (no wheel for a package, an install step failed).

    ``package`` names the package at fault when it is known. Nothing is left tagged or cached.
    """

    def __init__(self, message: str, package: str | None = None) -> None:
        super().__init__(message)
        self.package = package


class ArtifactStoreUnavailableError(SandboxServiceError):
    """The shared artifact store (S3) is off, cannot be reached, or refused the operation."""


class EnvironmentsUnsupportedError(SandboxServiceError):
    """Packages were asked for, but the configured runtime has no package environments."""


class PoolNotFoundError(SandboxServiceError):
    """No pool has this name."""


class PoolAlreadyExistsError(SandboxServiceError):
    """A pool with this name exists already."""


class AdminRequiredError(SandboxServiceError):
    """The operation changes what the whole service runs (pools): only admin keys may do it."""


class InvalidPoolError(InvalidInputError):
    """A pool definition breaks a rule (name not a DNS label, negative or inverted bounds)."""


class FilePathRefusedError(InvalidInputError):
    """A workspace path that is absolute, has '..', or leads out of the workspace (a symlink)."""


class FileTooLargeError(InvalidInputError):
    """A file past the per-file size limit; nothing was written."""


class WorkspaceFullError(SandboxServiceError):
    """The sandbox's workspace has no room left for the file; nothing was written."""


class WorkspaceFileNotFoundError(SandboxServiceError):
    """No regular file at that path in the chat's workspace (or the chat has no sandbox)."""


class SandboxLimitError(SandboxServiceError):
    """A new chat would pass a sandbox cap (this host's, or the key's on this host); chats that
    already have a sandbox keep working. Retry later."""


class WrongNodeError(SandboxServiceError):
    """The chat's sandbox runs on another node (host); ``node`` names it. This node cannot
    reach that sandbox: the request belongs on that node."""

    def __init__(self, message: str, node: str) -> None:
        super().__init__(message)
        self.node = node
