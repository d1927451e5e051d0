"""SandboxFileStore over any runtime whose sandboxes have the guest agent."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar, runtime_checkable

from adapter.agent.client import AgentClient, AgentUnansweredError
from domain.files import StoredFile, WorkspaceListing

T = TypeVar("T")


@runtime_checkable
class AgentHost(Protocol):
    """A runtime that lends its connection to a sandbox's agent (Docker, QEMU)."""

    def with_agent(self, container_id: str, action: Callable[[AgentClient], T]) -> T:
        """Run ``action`` on the sandbox's agent connection, one request stream at a time;
        SandboxGoneError when the sandbox or its agent is gone (the connection is dropped)."""
        ...


class AgentSandboxFileStore:
    """Files go through the agent in binary data frames of at most 1 MiB (pipelined, no answer
    per frame), so neither side holds a whole file in memory. Requests that were never answered
    because the agent handed an idle connection over to another process are sent again (nothing
    of them ran)."""

    _ATTEMPTS = 2

    def __init__(self, host: AgentHost) -> None:
        self._host = host

    def write_file(
        self, container_id: str, path: str, chunks: Iterable[bytes], max_bytes: int
    ) -> StoredFile:
        # A ping first takes any handover before the chunks start being consumed.
        self._retrying(container_id, lambda agent: agent.ping())
        return self._host.with_agent(
            container_id, lambda agent: agent.write_file(path, chunks, max_bytes)
        )

    def read_file(
        self, container_id: str, path: str, sink: Callable[[bytes], object]
    ) -> StoredFile:
        return self._retrying(container_id, lambda agent: agent.read_file(path, sink))

    def list_files(self, container_id: str, prefix: str) -> WorkspaceListing:
        return self._retrying(container_id, lambda agent: agent.list_files(prefix))

    def delete_file(self, container_id: str, path: str) -> None:
        self._retrying(container_id, lambda agent: agent.delete_file(path))

    def _retrying(self, container_id: str, action: Callable[[AgentClient], T]) -> T:
        for attempt in range(self._ATTEMPTS):
            try:
                return self._host.with_agent(container_id, action)
            except AgentUnansweredError:
                if attempt + 1 == self._ATTEMPTS:
                    raise
        raise AssertionError("unreachable")
