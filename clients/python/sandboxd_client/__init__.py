"""Python client of the sandboxd HTTP API (sync and async, on httpx)."""

from sandboxd_client.client import AsyncSandboxdClient, SandboxdClient
from sandboxd_client.models import (
    ChangedFile,
    ExecutionResult,
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
    "AsyncSandboxdClient",
    "ChangedFile",
    "ExecutionResult",
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
