"""The gRPC error table: the same errors as the HTTP table, mapped to gRPC status codes.

The stable error code (``entrypoint.error_codes``) travels in the trailing metadata key
``sandboxd-error-code`` so that clients can branch on it exactly as HTTP clients do.
"""

from __future__ import annotations

import grpc

from domain.errors import (
    InvalidInputError,
    LockTimeoutError,
    RepositoryUnavailableError,
    RuntimeUnavailableError,
    SandboxGoneError,
    SandboxNotFoundError,
    SandboxServiceError,
    TooManyExecutionsError,
)
from entrypoint.error_codes import ShuttingDownError, UnauthenticatedError
from repository.sandbox_session import SessionConflictError

ERROR_CODE_METADATA_KEY = "sandboxd-error-code"

GRPC_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    # CodeTooLargeError is an InvalidInputError: INVALID_ARGUMENT, code code_too_large.
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (SandboxNotFoundError, grpc.StatusCode.NOT_FOUND),
    (SessionConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (TooManyExecutionsError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RuntimeUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (RepositoryUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (SandboxGoneError, grpc.StatusCode.UNAVAILABLE),
    (LockTimeoutError, grpc.StatusCode.UNAVAILABLE),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (SandboxServiceError, grpc.StatusCode.INTERNAL),
)


def grpc_status(error: BaseException) -> grpc.StatusCode:
    for error_type, status in GRPC_STATUS:
        if isinstance(error, error_type):
            return status
    return grpc.StatusCode.INTERNAL
