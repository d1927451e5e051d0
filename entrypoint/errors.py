"""The one error table: per error class its stable code, HTTP status, gRPC status and CLI exit code.

HTTP (``entrypoint.http.errors``), gRPC (``entrypoint.grpc.errors``) and the CLI all read it.
A code, once published, never changes meaning: clients branch on it. Every error class of
``domain.errors`` and of the entrypoint has a row of its own (a unit test checks it); an error
class defined elsewhere (an adapter's or a repository's subclass) is looked up through its
nearest base class that has a row. Anything else is a bug: ``internal_error``, 500, INTERNAL,
exit 1.

LockTimeoutError is a 503 (with Retry-After), not a 409: the chat is busy right now, nothing
about the request conflicts, and retrying the same request later is the right move.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from domain.errors import (
    ArtifactStoreUnavailableError,
    CodeTooLargeError,
    EnvironmentBuildError,
    InvalidChatIdError,
    InvalidInputError,
    InvalidPackageError,
    InvalidTimeoutError,
    LockTimeoutError,
    PackageNotAllowedError,
    RepositoryUnavailableError,
    RuntimeUnavailableError,
    SandboxGoneError,
    SandboxNotFoundError,
    SandboxServiceError,
    SessionConflictError,
    TooManyExecutionsError,
    UnsupportedLanguageError,
)


class UnauthenticatedError(SandboxServiceError):
    """Missing or unknown API key."""


class ListenError(SandboxServiceError):
    """A port could not be bound (in use, or not allowed) at start-up."""


class ShuttingDownError(SandboxServiceError):
    """The service is draining for shutdown and takes no new executions."""


class InsecureConfigurationError(InvalidInputError):
    """No API keys and no explicit permission to run without them (a configuration error)."""


@dataclass(frozen=True)
class ErrorRow:
    error: type[BaseException]
    code: str
    http_status: int
    grpc_status: grpc.StatusCode
    exit_code: int


_G = grpc.StatusCode

ERROR_TABLE: tuple[ErrorRow, ...] = (
    ErrorRow(UnauthenticatedError, "unauthenticated", 401, _G.UNAUTHENTICATED, 1),
    ErrorRow(InvalidChatIdError, "invalid_chat_id", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(CodeTooLargeError, "code_too_large", 413, _G.INVALID_ARGUMENT, 2),
    ErrorRow(UnsupportedLanguageError, "unsupported_language", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(InvalidTimeoutError, "invalid_timeout", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(InvalidPackageError, "invalid_package", 422, _G.INVALID_ARGUMENT, 2),
    # A package that has no wheel, or a version that does not exist: the caller's request cannot
    # be served as asked, with the installer's message.
    ErrorRow(EnvironmentBuildError, "environment_build_failed", 422, _G.FAILED_PRECONDITION, 2),
    ErrorRow(PackageNotAllowedError, "package_not_allowed", 403, _G.PERMISSION_DENIED, 2),
    ErrorRow(InsecureConfigurationError, "invalid_input", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(InvalidInputError, "invalid_input", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(SandboxNotFoundError, "sandbox_not_found", 404, _G.NOT_FOUND, 3),
    ErrorRow(SessionConflictError, "session_conflict", 409, _G.ALREADY_EXISTS, 1),
    ErrorRow(TooManyExecutionsError, "too_many_executions", 429, _G.RESOURCE_EXHAUSTED, 1),
    ErrorRow(RuntimeUnavailableError, "runtime_unavailable", 503, _G.UNAVAILABLE, 4),
    ErrorRow(ArtifactStoreUnavailableError, "artifact_store_unavailable", 503, _G.UNAVAILABLE, 4),
    ErrorRow(RepositoryUnavailableError, "database_unavailable", 503, _G.UNAVAILABLE, 4),
    ErrorRow(SandboxGoneError, "sandbox_gone", 503, _G.UNAVAILABLE, 5),
    ErrorRow(LockTimeoutError, "lock_timeout", 503, _G.UNAVAILABLE, 6),
    ErrorRow(ShuttingDownError, "shutting_down", 503, _G.UNAVAILABLE, 1),
    ErrorRow(ListenError, "service_error", 500, _G.INTERNAL, 1),
    ErrorRow(SandboxServiceError, "service_error", 500, _G.INTERNAL, 1),
)

INTERNAL_ERROR = "internal_error"
UNEXPECTED_ERROR = ErrorRow(Exception, INTERNAL_ERROR, 500, _G.INTERNAL, 1)

_ROWS = {row.error: row for row in ERROR_TABLE}


def error_row(error: BaseException) -> ErrorRow:
    """The row of the error's class, or of its nearest base class that has one."""
    for cls in type(error).__mro__:
        row = _ROWS.get(cls)
        if row is not None:
            return row
    return UNEXPECTED_ERROR


def error_code(error: BaseException) -> str:
    return error_row(error).code


def public_message(error: BaseException) -> str:
    """What the caller may read: our own errors' text; never the text of an unexpected bug."""
    if isinstance(error, SandboxServiceError):
        return str(error) or type(error).__name__
    return "internal error; see the service log"
