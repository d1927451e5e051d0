"""Fixtures: the guest agent as a local process (testkit.agent) and a client connected to it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapter.agent.client import AgentClient
from testkit.agent import AgentProcess


@pytest.fixture
def agent_process() -> Iterator[AgentProcess]:
    # A short directory: Unix socket paths are limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="sbx-agent-", dir="/tmp"))
    agent = AgentProcess(directory)
    try:
        yield agent
    finally:
        agent.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(agent_process: AgentProcess) -> Iterator[AgentClient]:
    client = agent_process.connect()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def node_available() -> None:
    if shutil.which("node") is None:
        pytest.fail("node is not installed (the sandbox image has it; install nodejs here too)")


Connect = Callable[[], AgentClient]
