"""The one error table: every error class has its own row, and published values do not drift."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from grpc import StatusCode as G

import domain.errors
import entrypoint
from domain.errors import (
    CodeTooLargeError,
    InvalidInputError,
    LockTimeoutError,
    RepositoryUnavailableError,
    RuntimeUnavailableError,
    SandboxGoneError,
    SandboxNotFoundError,
    SandboxServiceError,
    SessionConflictError,
    TooManyExecutionsError,
)
from entrypoint.errors import (
    ERROR_TABLE,
    INTERNAL_ERROR,
    InsecureConfigurationError,
    ShuttingDownError,
    UnauthenticatedError,
    error_row,
)
from repository.database import SchemaOutOfDateError


def _error_classes_defined_in(module: object) -> set[type[BaseException]]:
    return {
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == getattr(module, "__name__", None)
    }


def _entrypoint_error_classes() -> set[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for info in pkgutil.walk_packages(entrypoint.__path__, "entrypoint."):
        if ".generated" in info.name or info.name.endswith("__main__"):
            continue
        found |= _error_classes_defined_in(importlib.import_module(info.name))
    return found


def test_every_error_class_has_a_row_of_its_own() -> None:
    rows = {row.error for row in ERROR_TABLE}
    classes = _error_classes_defined_in(domain.errors) | _entrypoint_error_classes()
    # The scan must see both sources, or the check below would pass vacuously.
    assert SessionConflictError in classes and ShuttingDownError in classes
    assert sorted(c.__name__ for c in classes - rows) == []


def test_each_class_has_exactly_one_row() -> None:
    errors = [row.error for row in ERROR_TABLE]
    assert len(errors) == len(set(errors))


@pytest.mark.parametrize(
    ("error", "code", "http", "grpc_status", "exit_code"),
    [
        (UnauthenticatedError(), "unauthenticated", 401, G.UNAUTHENTICATED, 1),
        (CodeTooLargeError(), "code_too_large", 413, G.INVALID_ARGUMENT, 2),
        (InvalidInputError(), "invalid_input", 422, G.INVALID_ARGUMENT, 2),
        (InsecureConfigurationError(), "invalid_input", 422, G.INVALID_ARGUMENT, 2),
        (SandboxNotFoundError(), "sandbox_not_found", 404, G.NOT_FOUND, 3),
        (SessionConflictError(), "session_conflict", 409, G.ALREADY_EXISTS, 1),
        (TooManyExecutionsError(), "too_many_executions", 429, G.RESOURCE_EXHAUSTED, 1),
        (RuntimeUnavailableError(), "runtime_unavailable", 503, G.UNAVAILABLE, 4),
        (RepositoryUnavailableError(), "database_unavailable", 503, G.UNAVAILABLE, 4),
        (SandboxGoneError(), "sandbox_gone", 503, G.UNAVAILABLE, 5),
        (LockTimeoutError(), "lock_timeout", 503, G.UNAVAILABLE, 6),
        (ShuttingDownError(), "shutting_down", 503, G.UNAVAILABLE, 1),
        (SandboxServiceError(), "service_error", 500, G.INTERNAL, 1),
        # A subclass from another layer goes by its nearest base with a row.
        (SchemaOutOfDateError("x"), "database_unavailable", 503, G.UNAVAILABLE, 4),
        (ValueError(), INTERNAL_ERROR, 500, G.INTERNAL, 1),
    ],
)
def test_published_codes_and_statuses(
    error: BaseException, code: str, http: int, grpc_status: G, exit_code: int
) -> None:
    row = error_row(error)
    assert (row.code, row.http_status, row.grpc_status, row.exit_code) == (
        code,
        http,
        grpc_status,
        exit_code,
    )


def test_serve_takes_exit_codes_from_the_table_not_from_the_cli() -> None:
    """cli.py imports serve.py; serve.py importing cli.py back (even lazily) is a loop."""
    source = Path(entrypoint.__file__).with_name("serve.py").read_text()
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert "entrypoint.cli" not in imported
