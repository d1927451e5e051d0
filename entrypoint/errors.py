"""The one error table: per error class its stable code, HTTP status, gRPC status and CLI exit code.

HTTP (``entrypoint.http.errors``), gRPC (``entrypoint.grpc.errors``) and the CLI all read it.
A code, once published, never changes meaning: clients branch on it. Every error class of
``domain.errors`` and of the entrypoint has a row of its own (a unit test checks it); an error
class defined elsewhere (an adapter's or a repository's subclass) is looked up through its
nearest base class that has a row. Anything else is a bug: ``internal_error``, 500, INTERNAL,
exit 1.

What a caller reads: errors about the request itself (bad input, unknown key, too many
executions) keep their own text, which names only what the caller sent. Errors from the machinery
(runtime, database, a bug) carry a fixed public message per code plus the request id
(``public_message``): their own text may hold host paths, engine messages or database host and
user names, so it goes only to the log, under the same request id.

LockTimeoutError is a 503 (with Retry-After), not a 409: the chat is busy right now, nothing
about the request conflicts, and retrying the same request later is the right move.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from domain.errors import (
    AdminRequiredError,
    ArtifactStoreUnavailableError,
    CodeTooLargeError,
    EnvironmentBuildError,
    EnvironmentsUnsupportedError,
    FilePathRefusedError,
    FileTooLargeError,
    InvalidChatIdError,
    InvalidInputError,
    InvalidPackageError,
    InvalidPoolError,
    InvalidTimeoutError,
    LockLostError,
    LockTimeoutError,
    PackageNotAllowedError,
    PoolAlreadyExistsError,
    PoolNotFoundError,
    RepositoryUnavailableError,
    RuntimeUnavailableError,
    SandboxGoneError,
    SandboxLimitError,
    SandboxNotFoundError,
    SandboxServiceError,
    SessionConflictError,
    StorageFullError,
    TooManyExecutionsError,
    UnsupportedLanguageError,
    WorkspaceFileNotFoundError,
    WorkspaceFullError,
    WrongNodeError,
)
from usecase.ports import Logger


class UnauthenticatedError(SandboxServiceError):
    """Missing or unknown API key."""


class ListenError(SandboxServiceError):
    """A port could not be bound (in use, or not allowed) at start-up."""


class ShuttingDownError(SandboxServiceError):
    """The service is draining for shutdown and takes no new executions."""


class InsecureConfigurationError(InvalidInputError):
    """No API keys and no explicit permission to run without them (a configuration error)."""


class SandboxUidConflictError(InvalidInputError):
    """The service runs under the uid its sandboxes run as: the channel directory it hands to
    a sandbox would then be the service's own files (a configuration error, refused at start)."""


class SlowClientError(SandboxServiceError):
    """A streaming client did not read its output fast enough; it is dropped (the execution
    still completes and is recorded)."""


@dataclass(frozen=True)
class ErrorRow:
    error: type[BaseException]
    code: str
    http_status: int
    grpc_status: grpc.StatusCode
    exit_code: int
    # None: the error's own text is safe to show (it is about the request). Otherwise the fixed
    # text shown instead of it.
    public: str | None = None


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
    # The request is fine; this runtime cannot serve it (the text names the runtime only).
    ErrorRow(EnvironmentsUnsupportedError, "environments_unsupported", 501, _G.UNIMPLEMENTED, 4),
    ErrorRow(PackageNotAllowedError, "package_not_allowed", 403, _G.PERMISSION_DENIED, 2),
    ErrorRow(FilePathRefusedError, "path_refused", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(FileTooLargeError, "file_too_large", 413, _G.INVALID_ARGUMENT, 2),
    ErrorRow(WorkspaceFileNotFoundError, "file_not_found", 404, _G.NOT_FOUND, 3),
    ErrorRow(WorkspaceFullError, "workspace_full", 507, _G.RESOURCE_EXHAUSTED, 1),
    ErrorRow(InsecureConfigurationError, "invalid_input", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(InvalidPoolError, "invalid_pool", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(InvalidInputError, "invalid_input", 422, _G.INVALID_ARGUMENT, 2),
    ErrorRow(PoolNotFoundError, "pool_not_found", 404, _G.NOT_FOUND, 3),
    ErrorRow(PoolAlreadyExistsError, "pool_already_exists", 409, _G.ALREADY_EXISTS, 2),
    ErrorRow(AdminRequiredError, "admin_required", 403, _G.PERMISSION_DENIED, 2),
    ErrorRow(SandboxNotFoundError, "sandbox_not_found", 404, _G.NOT_FOUND, 3),
    ErrorRow(
        SandboxUidConflictError,
        "invalid_input",
        422,
        _G.INVALID_ARGUMENT,
        2,
        "invalid configuration",
    ),
    ErrorRow(
        SessionConflictError,
        "session_conflict",
        409,
        _G.ALREADY_EXISTS,
        1,
        "conflicting session records",
    ),
    ErrorRow(TooManyExecutionsError, "too_many_executions", 429, _G.RESOURCE_EXHAUSTED, 1),
    ErrorRow(SandboxLimitError, "sandbox_limit", 429, _G.RESOURCE_EXHAUSTED, 1),
    # 421 Misdirected Request: the request belongs on the node its text names (routing between
    # nodes is not built yet).
    ErrorRow(WrongNodeError, "wrong_node", 421, _G.FAILED_PRECONDITION, 1),
    ErrorRow(
        RuntimeUnavailableError,
        "runtime_unavailable",
        503,
        _G.UNAVAILABLE,
        4,
        "runtime unavailable",
    ),
    ErrorRow(
        ArtifactStoreUnavailableError,
        "artifact_store_unavailable",
        503,
        _G.UNAVAILABLE,
        4,
        "artifact store unavailable",
    ),
    # A 503, not a 507 like workspace_full: the caller asked for nothing too big; the service's
    # disk is full, and the same request succeeds once an operator frees space.
    ErrorRow(
        StorageFullError,
        "storage_full",
        503,
        _G.UNAVAILABLE,
        4,
        "the service's storage is full",
    ),
    ErrorRow(
        RepositoryUnavailableError,
        "database_unavailable",
        503,
        _G.UNAVAILABLE,
        4,
        "database unavailable",
    ),
    ErrorRow(SandboxGoneError, "sandbox_gone", 503, _G.UNAVAILABLE, 5, "the sandbox is gone"),
    ErrorRow(LockTimeoutError, "lock_timeout", 503, _G.UNAVAILABLE, 6, "the chat is busy"),
    ErrorRow(LockLostError, "lock_lost", 503, _G.UNAVAILABLE, 6, "the chat's lock was lost"),
    ErrorRow(ShuttingDownError, "shutting_down", 503, _G.UNAVAILABLE, 1),
    ErrorRow(SlowClientError, "slow_client", 503, _G.RESOURCE_EXHAUSTED, 1),
    ErrorRow(ListenError, "service_error", 500, _G.INTERNAL, 1, "service error"),
    ErrorRow(SandboxServiceError, "service_error", 500, _G.INTERNAL, 1, "service error"),
)

INTERNAL_ERROR = "internal_error"
UNEXPECTED_ERROR = ErrorRow(Exception, INTERNAL_ERROR, 500, _G.INTERNAL, 1, "internal error")

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


def is_generic(error: BaseException) -> bool:
    """True when the caller gets the row's fixed text: the error's own goes only to the log."""
    return error_row(error).public is not None


def public_message(error: BaseException, request_id: str = "") -> str:
    """What the caller may read: the text of an error about the request, else the row's fixed
    text plus the request id under which the log holds the detail."""
    row = error_row(error)
    if row.public is None:
        return str(error) or type(error).__name__
    return f"{row.public} (request id {request_id})" if request_id else row.public


def log_error_detail(
    logger: Logger, event: str, error: BaseException, request_id: str, transport: str
) -> None:
    """The detail a caller does not see (host paths, engine and database messages)."""
    row = error_row(error)
    attrs = {
        "request_id": request_id,
        "transport": transport,
        "code": row.code,
        "error": type(error).__name__,
        "detail": str(error)[:2000],
    }
    if row.http_status >= 500:
        logger.error(event, attrs)
    else:
        logger.warning(event, attrs)
