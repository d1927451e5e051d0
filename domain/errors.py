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


class LockTimeoutError(SandboxServiceError):
    """The chat's lifecycle lock could not be taken in time."""


class SessionConflictError(SandboxServiceError):
    """A second current session for one chat: the store's one-per-chat rule was broken."""


class TooManyExecutionsError(SandboxServiceError):
    """The service is at its limit of executions in flight; retry later."""
