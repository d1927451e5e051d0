"""Python client of the sandboxd HTTP API (sync and async, on httpx)."""

from sandboxd_client.client import AsyncSandboxdClient, SandboxdClient
from sandboxd_client.models import (
    ExecutionResult,
    OutputEvent,
    Pool,
    Sandbox,
    SandboxdError,
    SandboxPage,
)

__all__ = [
    "AsyncSandboxdClient",
    "ExecutionResult",
    "OutputEvent",
    "Pool",
    "Sandbox",
    "SandboxPage",
    "SandboxdClient",
    "SandboxdError",
]
