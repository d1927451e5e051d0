"""Errors of the machinery never show their own text to a caller (issue 11, item 6)."""

from __future__ import annotations

import pytest

from domain.errors import (
    LockTimeoutError,
    RepositoryUnavailableError,
    RuntimeUnavailableError,
    SandboxGoneError,
    SandboxServiceError,
    SessionConflictError,
    UnsupportedLanguageError,
)
from entrypoint.errors import ListenError, SandboxUidConflictError, public_message

SECRET = "engine at /var/run/secret.sock as admin@db.internal said no"


@pytest.mark.parametrize(
    "error_class",
    [
        RuntimeUnavailableError,
        RepositoryUnavailableError,
        SandboxGoneError,
        LockTimeoutError,
        SessionConflictError,
        SandboxUidConflictError,
        ListenError,
        SandboxServiceError,
        RuntimeError,
    ],
)
def test_the_caller_reads_a_fixed_text_and_the_request_id(
    error_class: type[Exception],
) -> None:
    message = public_message(error_class(SECRET), "req-42")

    assert "secret" not in message and "@" not in message and "/" not in message
    assert "req-42" in message


def test_errors_about_the_request_keep_their_own_text() -> None:
    error = UnsupportedLanguageError("unsupported language 'cobol'")

    assert public_message(error, "req-42") == "unsupported language 'cobol'"
