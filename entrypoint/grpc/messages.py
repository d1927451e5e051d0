"""Protobuf messages from the domain's values, for the servicers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from domain.execution import ExecutionResult
from domain.files import StoredFile
from domain.sandbox import SandboxSession
from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.wire import clamp_exit_code
from usecase.execute import CodeExecution

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> Timestamp | None:
    """What ``Timestamp.FromDatetime`` makes (a naive value taken as UTC), without its
    timetuple and calendar work: four of these go into every Execute's answer."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def sandbox_message(session: SandboxSession) -> Any:
    return pb.Sandbox(
        chat_id=str(session.chat_id),
        session_id=str(session.session_id),
        container_id=session.container_id,
        status=session.status.value,
        runtime_kind=session.runtime_kind,
        created_at=timestamp(session.created_at),
        expires_at=timestamp(session.expires_at),
        last_activity_at=timestamp(session.last_activity_at),
        max_expires_at=timestamp(session.max_expires_at),
        packages=list(session.packages),
    )


def result_message(result: ExecutionResult) -> Any:
    return pb.ExecutionResult(
        stdout=result.stdout,
        stderr=result.stderr,
        exit_code=clamp_exit_code(result.exit_code),
        duration_s=result.duration_s,
        timed_out=result.timed_out,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        sandbox_replaced=result.sandbox_replaced,
        state_lost=result.state_lost,
        outputs=[
            pb.RichOutput(mime_type=o.mime_type, data=o.data, encoding=o.encoding)
            for o in result.outputs
        ],
        outputs_truncated=result.outputs_truncated,
        changed_files=[pb.ChangedFile(path=f.path, size=f.size) for f in result.changed_files],
        changed_files_truncated=result.changed_files_truncated,
    )


def execute_response(execution: CodeExecution) -> Any:
    return pb.ExecuteResponse(
        result=result_message(execution.result), sandbox=sandbox_message(execution.session)
    )


def stored_message(stored: StoredFile) -> Any:
    return pb.StoredFile(path=stored.path, size=stored.size, sha256=stored.sha256)
