"""Stable snake_case error codes, shared by every entrypoint's status table.

A code, once published, never changes meaning: clients branch on it. The first matching class
wins, so subclasses come before their bases.
"""

from __future__ import annotations

from domain.errors import (
    CodeTooLargeError,
    InvalidChatIdError,
    InvalidInputError,
    InvalidTimeoutError,
    LockTimeoutError,
    RepositoryUnavailableError,
    RuntimeUnavailableError,
    SandboxGoneError,
    SandboxNotFoundError,
    SandboxServiceError,
    TooManyExecutionsError,
    UnsupportedLanguageError,
)
from repository.sandbox_session import SessionConflictError


class UnauthenticatedError(SandboxServiceError):
    """Missing or unknown API key."""


class ListenError(SandboxServiceError):
    """A port could not be bound (in use, or not allowed) at start-up."""


class ShuttingDownError(SandboxServiceError):
    """The service is draining for shutdown and takes no new executions."""


ERROR_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (UnauthenticatedError, "unauthenticated"),
    (InvalidChatIdError, "invalid_chat_id"),
    (CodeTooLargeError, "code_too_large"),
    (UnsupportedLanguageError, "unsupported_language"),
    (InvalidTimeoutError, "invalid_timeout"),
    (InvalidInputError, "invalid_input"),
    (SandboxNotFoundError, "sandbox_not_found"),
    (SessionConflictError, "session_conflict"),
    (TooManyExecutionsError, "too_many_executions"),
    (RuntimeUnavailableError, "runtime_unavailable"),
    (RepositoryUnavailableError, "database_unavailable"),
    (SandboxGoneError, "sandbox_gone"),
    (LockTimeoutError, "lock_timeout"),
    (ShuttingDownError, "shutting_down"),
    (SandboxServiceError, "service_error"),
)

INTERNAL_ERROR = "internal_error"


def error_code(error: BaseException) -> str:
    for error_type, code in ERROR_CODES:
        if isinstance(error, error_type):
            return code
    return INTERNAL_ERROR


def public_message(error: BaseException) -> str:
    """What the caller may read: our own errors' text; never the text of an unexpected bug."""
    if isinstance(error, SandboxServiceError):
        return str(error) or type(error).__name__
    return "internal error; see the service log"
