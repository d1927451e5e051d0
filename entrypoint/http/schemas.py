"""Request and response bodies of the HTTP API (also the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from domain.execution import ExecutionResult, Language
from domain.sandbox import SandboxSession
from entrypoint.wire import clamp_exit_code
from usecase.execute import CodeExecution

PACKAGES_DESCRIPTION = (
    "Requirements the chat's sandbox must have, for the request's language: PyPI names with "
    "optional version specifiers (pandas>=2.0), npm names with an optional @version for "
    "JavaScript. A new sandbox starts from the cached environment; a running one gets the "
    "missing packages installed, keeping its state."
)


# The schema says what is accepted; the checks themselves stay with the use cases (so that a
# malformed chat id, language or timeout gets its own error code, not FastAPI's generic one).
ChatIdPath = Annotated[
    str, Path(description="The chat's id, a UUID.", json_schema_extra={"format": "uuid"})
]
_LANGUAGE_SCHEMA: dict[str, Any] = {"enum": Language.accepted_names()}


class ExecuteBody(BaseModel):
    # Strict: what the schema says is what is accepted ("5" is not a number of seconds).
    model_config = ConfigDict(extra="forbid", strict=True)

    code: str = Field(description="Source code; at most SANDBOXD_MAX_CODE_BYTES UTF-8 bytes.")
    language: str = Field(
        "python",
        description="python, javascript or shell (aliases: py, js...)",
        json_schema_extra=_LANGUAGE_SCHEMA,
    )
    timeout_s: float | None = Field(
        None,
        description=(
            "Seconds before the code is killed, at most SANDBOXD_MAX_TIMEOUT_S; default "
            "SANDBOXD_DEFAULT_TIMEOUT_S."
        ),
        json_schema_extra={"exclusiveMinimum": 0},
    )
    packages: list[str] = Field(
        default_factory=list, description=PACKAGES_DESCRIPTION, max_length=256
    )


class EnsureBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    packages: list[str] = Field(
        default_factory=list, description=PACKAGES_DESCRIPTION, max_length=256
    )
    language: str = Field(
        "python",
        description="The language the packages are for.",
        json_schema_extra=_LANGUAGE_SCHEMA,
    )


class ErrorBody(BaseModel):
    code: str = Field(description="Stable snake_case error code; see the README's error table.")
    message: str
    request_id: str = Field(description="The request's x-request-id; the log has the detail.")


class SandboxView(BaseModel):
    chat_id: str
    session_id: str
    container_id: str
    status: str = Field(description="running or dead")
    runtime_kind: str
    created_at: datetime
    expires_at: datetime
    last_activity_at: datetime | None
    max_expires_at: datetime | None
    packages: list[str] = Field(
        default_factory=list, description="Extra packages it has (npm ones prefixed npm:)."
    )


class ChangedFileView(BaseModel):
    path: str
    size: int


class RichOutputView(BaseModel):
    mime_type: str = Field(description="text/plain, text/html, image/png, image/svg+xml, ...")
    data: str
    encoding: str = Field(description='"base64" for binary types (image/png), else "utf-8".')


class ExecutionView(BaseModel):
    stdout: str
    stderr: str
    exit_code: int | None = Field(description="None when the code did not finish (timed out).")
    duration_s: float
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    sandbox_replaced: bool = Field(description="The chat's sandbox was dead and was replaced.")
    state_lost: bool = Field(description="Variables and files of earlier messages are gone.")
    outputs: list[RichOutputView] = Field(
        default_factory=list, description="Rich outputs (last expression, figures) in order."
    )
    outputs_truncated: bool = Field(default=False, description="Some rich outputs were dropped.")
    changed_files: list[ChangedFileView] = Field(
        default_factory=list, description="Workspace files the code created or changed."
    )
    changed_files_truncated: bool = False
    session: SandboxView


class SandboxPage(BaseModel):
    items: list[SandboxView]
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; None on the last one.")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def sandbox_json(session: SandboxSession) -> dict[str, Any]:
    return {
        "chat_id": str(session.chat_id),
        "session_id": str(session.session_id),
        "container_id": session.container_id,
        "status": session.status.value,
        "runtime_kind": session.runtime_kind,
        "created_at": _iso(session.created_at),
        "expires_at": _iso(session.expires_at),
        "last_activity_at": _iso(session.last_activity_at),
        "max_expires_at": _iso(session.max_expires_at),
        "packages": list(session.packages),
    }


def result_json(result: ExecutionResult) -> dict[str, Any]:
    return {
        "stdout": result.stdout,
        "stderr": result.stderr,
        "exit_code": clamp_exit_code(result.exit_code),
        "duration_s": result.duration_s,
        "timed_out": result.timed_out,
        "stdout_truncated": result.stdout_truncated,
        "stderr_truncated": result.stderr_truncated,
        "sandbox_replaced": result.sandbox_replaced,
        "state_lost": result.state_lost,
        "outputs": [
            {"mime_type": o.mime_type, "data": o.data, "encoding": o.encoding}
            for o in result.outputs
        ],
        "outputs_truncated": result.outputs_truncated,
        "changed_files": [{"path": f.path, "size": f.size} for f in result.changed_files],
        "changed_files_truncated": result.changed_files_truncated,
    }


def execution_json(execution: CodeExecution) -> dict[str, Any]:
    return {**result_json(execution.result), "session": sandbox_json(execution.session)}
