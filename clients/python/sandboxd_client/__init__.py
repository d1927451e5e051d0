"""Python client of the sandboxd HTTP API (sync and async, on httpx)."""

from sandboxd_client.client import AsyncSandboxdClient, SandboxdClient
from sandboxd_client.models import (
    ERROR_CODES,
    ChangedFile,
    ExecutionResult,
    FileListing,
    OutputEvent,
    Pool,
    RichOutput,
    Sandbox,
    SandboxdError,
    SandboxPage,
    StoredFile,
    WorkspaceFile,
)

__all__ = [
    "ERROR_CODES",
    "AsyncSandboxdClient",
    "ChangedFile",
    "ExecutionResult",
    "FileListing",
    "OutputEvent",
    "Pool",
    "RichOutput",
    "Sandbox",
    "SandboxPage",
    "SandboxdClient",
    "SandboxdError",
    "StoredFile",
    "WorkspaceFile",
]
