import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FileRequest(_message.Message):
    __slots__ = ("chat_id", "path")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    path: str
    def __init__(self, chat_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class UploadFileRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: FileRequest
    chunk: bytes
    def __init__(self, header: _Optional[_Union[FileRequest, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class StoredFile(_message.Message):
    __slots__ = ("path", "size", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class DownloadFileResponse(_message.Message):
    __slots__ = ("info", "chunk")
    INFO_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    info: StoredFile
    chunk: bytes
    def __init__(self, info: _Optional[_Union[StoredFile, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ListFilesRequest(_message.Message):
    __slots__ = ("chat_id", "prefix")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    prefix: str
    def __init__(self, chat_id: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class WorkspaceFile(_message.Message):
    __slots__ = ("path", "size", "modified_at")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    modified_at: _timestamp_pb2.Timestamp
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListFilesResponse(_message.Message):
    __slots__ = ("files", "truncated")
    FILES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[WorkspaceFile]
    truncated: bool
    def __init__(self, files: _Optional[_Iterable[_Union[WorkspaceFile, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class DeleteFileResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RichOutput(_message.Message):
    __slots__ = ("mime_type", "data", "encoding")
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    mime_type: str
    data: str
    encoding: str
    def __init__(self, mime_type: _Optional[str] = ..., data: _Optional[str] = ..., encoding: _Optional[str] = ...) -> None: ...

class ChangedFile(_message.Message):
    __slots__ = ("path", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("chat_id",)
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    def __init__(self, chat_id: _Optional[str] = ...) -> None: ...

class EnsureSandboxRequest(_message.Message):
    __slots__ = ("chat_id", "packages", "language")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    packages: _containers.RepeatedScalarFieldContainer[str]
    language: str
    def __init__(self, chat_id: _Optional[str] = ..., packages: _Optional[_Iterable[str]] = ..., language: _Optional[str] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("chat_id", "code", "language", "timeout_s", "packages")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    code: str
    language: str
    timeout_s: float
    packages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chat_id: _Optional[str] = ..., code: _Optional[str] = ..., language: _Optional[str] = ..., timeout_s: _Optional[float] = ..., packages: _Optional[_Iterable[str]] = ...) -> None: ...

class ExecutionResult(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code", "duration_s", "timed_out", "stdout_truncated", "stderr_truncated", "sandbox_replaced", "state_lost", "outputs", "outputs_truncated", "changed_files", "changed_files_truncated")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_REPLACED_FIELD_NUMBER: _ClassVar[int]
    STATE_LOST_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FILES_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FILES_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    stdout: str
    stderr: str
    exit_code: int
    duration_s: float
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    sandbox_replaced: bool
    state_lost: bool
    outputs: _containers.RepeatedCompositeFieldContainer[RichOutput]
    outputs_truncated: bool
    changed_files: _containers.RepeatedCompositeFieldContainer[ChangedFile]
    changed_files_truncated: bool
    def __init__(self, stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., exit_code: _Optional[int] = ..., duration_s: _Optional[float] = ..., timed_out: _Optional[bool] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., sandbox_replaced: _Optional[bool] = ..., state_lost: _Optional[bool] = ..., outputs: _Optional[_Iterable[_Union[RichOutput, _Mapping]]] = ..., outputs_truncated: _Optional[bool] = ..., changed_files: _Optional[_Iterable[_Union[ChangedFile, _Mapping]]] = ..., changed_files_truncated: _Optional[bool] = ...) -> None: ...

class Sandbox(_message.Message):
    __slots__ = ("chat_id", "session_id", "container_id", "status", "runtime_kind", "created_at", "expires_at", "last_activity_at", "max_expires_at", "packages")
    CHAT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_KIND_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    chat_id: str
    session_id: str
    container_id: str
    status: str
    runtime_kind: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    last_activity_at: _timestamp_pb2.Timestamp
    max_expires_at: _timestamp_pb2.Timestamp
    packages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chat_id: _Optional[str] = ..., session_id: _Optional[str] = ..., container_id: _Optional[str] = ..., status: _Optional[str] = ..., runtime_kind: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., packages: _Optional[_Iterable[str]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("result", "sandbox")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    result: ExecutionResult
    sandbox: Sandbox
    def __init__(self, result: _Optional[_Union[ExecutionResult, _Mapping]] = ..., sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("stream", "data")
    class Stream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STREAM_UNSPECIFIED: _ClassVar[OutputChunk.Stream]
        STDOUT: _ClassVar[OutputChunk.Stream]
        STDERR: _ClassVar[OutputChunk.Stream]
    STREAM_UNSPECIFIED: OutputChunk.Stream
    STDOUT: OutputChunk.Stream
    STDERR: OutputChunk.Stream
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    stream: OutputChunk.Stream
    data: str
    def __init__(self, stream: _Optional[_Union[OutputChunk.Stream, str]] = ..., data: _Optional[str] = ...) -> None: ...

class ExecuteEvent(_message.Message):
    __slots__ = ("output", "result", "display")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_FIELD_NUMBER: _ClassVar[int]
    output: OutputChunk
    result: ExecuteResponse
    display: RichOutput
    def __init__(self, output: _Optional[_Union[OutputChunk, _Mapping]] = ..., result: _Optional[_Union[ExecuteResponse, _Mapping]] = ..., display: _Optional[_Union[RichOutput, _Mapping]] = ...) -> None: ...

class DestroySandboxResponse(_message.Message):
    __slots__ = ("destroyed", "sandbox")
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    destroyed: bool
    sandbox: Sandbox
    def __init__(self, destroyed: _Optional[bool] = ..., sandbox: _Optional[_Union[Sandbox, _Mapping]] = ...) -> None: ...

class PoolRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListPoolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPoolsResponse(_message.Message):
    __slots__ = ("pools",)
    POOLS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedCompositeFieldContainer[Pool]
    def __init__(self, pools: _Optional[_Iterable[_Union[Pool, _Mapping]]] = ...) -> None: ...

class PoolEnvironment(_message.Message):
    __slots__ = ("language", "packages")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    language: str
    packages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, language: _Optional[str] = ..., packages: _Optional[_Iterable[str]] = ...) -> None: ...

class CapacitySpec(_message.Message):
    __slots__ = ("buffer_max", "buffer_min", "pool_max", "pool_min")
    BUFFER_MAX_FIELD_NUMBER: _ClassVar[int]
    BUFFER_MIN_FIELD_NUMBER: _ClassVar[int]
    POOL_MAX_FIELD_NUMBER: _ClassVar[int]
    POOL_MIN_FIELD_NUMBER: _ClassVar[int]
    buffer_max: int
    buffer_min: int
    pool_max: int
    pool_min: int
    def __init__(self, buffer_max: _Optional[int] = ..., buffer_min: _Optional[int] = ..., pool_max: _Optional[int] = ..., pool_min: _Optional[int] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("total", "allocated", "available", "revision")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    total: int
    allocated: int
    available: int
    revision: int
    def __init__(self, total: _Optional[int] = ..., allocated: _Optional[int] = ..., available: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class Pool(_message.Message):
    __slots__ = ("name", "environment", "capacity_spec", "status")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    environment: PoolEnvironment
    capacity_spec: CapacitySpec
    status: PoolStatus
    def __init__(self, name: _Optional[str] = ..., environment: _Optional[_Union[PoolEnvironment, _Mapping]] = ..., capacity_spec: _Optional[_Union[CapacitySpec, _Mapping]] = ..., status: _Optional[_Union[PoolStatus, _Mapping]] = ...) -> None: ...

class DeletePoolResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
