"""What the sandboxd HTTP API returns, as plain dataclasses (no dependency on the service)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The codes the service answers with, as of this client; a newer service may add more. The
# client makes its own too: ``digest_mismatch`` (a corrupt download) and ``http_<status>`` (an
# error body that is not JSON, e.g. from a proxy).
ERROR_CODES: tuple[str, ...] = (
    # entrypoint/errors.py: the error table
    "unauthenticated",
    "invalid_chat_id",
    "code_too_large",
    "unsupported_language",
    "invalid_timeout",
    "invalid_package",
    "environment_build_failed",
    "environments_unsupported",
    "package_not_allowed",
    "path_refused",
    "file_too_large",
    "file_not_found",
    "workspace_full",
    "invalid_input",
    "invalid_pool",
    "pool_not_found",
    "pool_already_exists",
    "admin_required",
    "sandbox_not_found",
    "session_conflict",
    "too_many_executions",
    "sandbox_limit",
    "wrong_node",
    "runtime_unavailable",
    "artifact_store_unavailable",
    "storage_full",
    "database_unavailable",
    "sandbox_gone",
    "lock_timeout",
    "lock_lost",
    "shutting_down",
    "slow_client",
    "service_error",
    "internal_error",
    # entrypoint/http: request validation, routing, readiness
    "invalid_request",
    "not_found",
    "method_not_allowed",
    "request_too_large",
    "unsupported_media_type",
    "not_ready",
)


class SandboxdError(Exception):
    """An error response: ``status`` (HTTP; 0 inside a stream or for a corrupt download),
    ``code`` (stable: ERROR_CODES, see the README), ``message``."""

    def __init__(self, status: int, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        """True for 429 and 503: the same request may succeed later."""
        return self.status in (429, 503)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class Sandbox:
    chat_id: str
    session_id: str
    container_id: str
    status: str
    runtime_kind: str
    created_at: datetime
    expires_at: datetime
    last_activity_at: datetime | None
    max_expires_at: datetime | None
    # Extra packages it has (npm ones prefixed "npm:").
    packages: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sandbox:
        return cls(
            chat_id=data["chat_id"],
            session_id=data["session_id"],
            container_id=data["container_id"],
            status=data["status"],
            runtime_kind=data.get("runtime_kind", ""),
            created_at=datetime.fromisoformat(data["created_at"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
            last_activity_at=_time(data.get("last_activity_at")),
            max_expires_at=_time(data.get("max_expires_at")),
            packages=tuple(data.get("packages") or ()),
        )


@dataclass(frozen=True)
class RichOutput:
    """A displayed value; also streamed as a ``display`` event when it happens."""

    mime_type: str
    data: str
    encoding: str = "utf-8"

    @property
    def content(self) -> bytes:
        """The decoded bytes (a PNG's, for image/png)."""
        if self.encoding == "base64":
            return base64.b64decode(self.data)
        return self.data.encode("utf-8")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RichOutput:
        return cls(data["mime_type"], data["data"], data.get("encoding", "utf-8"))


@dataclass(frozen=True)
class ChangedFile:
    path: str
    size: int


@dataclass(frozen=True)
class StoredFile:
    """A file as uploaded or downloaded."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class WorkspaceFile:
    path: str
    size: int
    modified_at: datetime


@dataclass(frozen=True)
class FileListing:
    """A workspace listing; ``truncated`` when the service listed only part of it. Iterates and
    sizes like its ``files``."""

    files: tuple[WorkspaceFile, ...]
    truncated: bool = False

    def __iter__(self) -> Iterator[WorkspaceFile]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class ExecutionResult:
    """One execution. A timeout is a result: ``timed_out`` True, ``exit_code`` None."""

    stdout: str
    stderr: str
    exit_code: int | None
    duration_s: float
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    sandbox_replaced: bool
    state_lost: bool
    sandbox: Sandbox
    # Rich outputs (last expression, figures, tables) in order, and the files the code changed.
    outputs: tuple[RichOutput, ...] = ()
    outputs_truncated: bool = False
    changed_files: tuple[ChangedFile, ...] = ()
    changed_files_truncated: bool = False

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecutionResult:
        return cls(
            stdout=data["stdout"],
            stderr=data["stderr"],
            exit_code=data["exit_code"],
            duration_s=data["duration_s"],
            timed_out=data["timed_out"],
            stdout_truncated=data["stdout_truncated"],
            stderr_truncated=data["stderr_truncated"],
            sandbox_replaced=data["sandbox_replaced"],
            state_lost=data["state_lost"],
            sandbox=Sandbox.from_json(data["session"]),
            outputs=tuple(RichOutput.from_json(o) for o in data.get("outputs", ())),
            outputs_truncated=data.get("outputs_truncated", False),
            changed_files=tuple(
                ChangedFile(f["path"], f["size"]) for f in data.get("changed_files", ())
            ),
            changed_files_truncated=data.get("changed_files_truncated", False),
        )


@dataclass(frozen=True)
class SandboxPage:
    items: list[Sandbox]
    # What the service answered for (``limit`` as it applied it).
    limit: int
    offset: int
    next_offset: int | None


@dataclass(frozen=True)
class OutputEvent:
    """A piece of output while the code runs (``stream`` is stdout or stderr)."""

    stream: str
    data: str


@dataclass(frozen=True)
class Pool:
    """A warm pool: its definition (OpenSandbox's capacitySpec) and this replica's status."""

    name: str
    language: str
    packages: tuple[str, ...]
    buffer_min: int
    buffer_max: int
    pool_min: int
    pool_max: int
    total: int
    allocated: int
    available: int
    revision: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pool:
        spec = data["capacitySpec"]
        status = data["status"]
        return cls(
            name=data["name"],
            language=data["environment"]["language"],
            packages=tuple(data["environment"]["packages"]),
            buffer_min=spec["bufferMin"],
            buffer_max=spec["bufferMax"],
            pool_min=spec["poolMin"],
            pool_max=spec["poolMax"],
            total=status["total"],
            allocated=status["allocated"],
            available=status["available"],
            revision=status["revision"],
        )


def capacity_spec(buffer_min: int, buffer_max: int, pool_min: int, pool_max: int) -> dict[str, int]:
    return {
        "bufferMin": buffer_min,
        "bufferMax": buffer_max,
        "poolMin": pool_min,
        "poolMax": pool_max,
    }
