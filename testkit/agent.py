"""The guest agent, run as a local process listening on a Unix socket in a directory of the test."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from adapter.agent.client import AgentClient

AGENT = Path(__file__).resolve().parents[1] / "adapter" / "agent" / "guest" / "sandbox_agent.py"


class AgentProcess:
    def __init__(self, directory: Path, *extra_args: str, prefix: Sequence[str] = ()) -> None:
        self.directory = directory
        self.socket = directory / "agent.sock"
        self.workdir = directory / "work"
        self.workdir.mkdir()
        self.process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                str(AGENT),
                "--listen",
                str(self.socket),
                "--workdir",
                str(self.workdir),
                *extra_args,
            ],
            stderr=subprocess.PIPE,
            # Its own process group: with a prefix (unshare --fork) the agent is a grandchild,
            # which a kill of the direct child would leave running, reparented to init.
            start_new_session=True,
        )

    def connect(self, margin_s: float = 5.0) -> AgentClient:
        deadline = time.monotonic() + 10
        while True:
            try:
                return AgentClient.connect_unix(str(self.socket), margin_s=margin_s)
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.01)

    def raw(self) -> socket.socket:
        """A plain socket to the agent, for speaking the protocol by hand."""
        self.connect().close()  # waits until the agent listens
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(self.socket))
        return sock

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        assert self.process.stderr is not None
        self.process.stderr.close()


def load_guest_agent(name: str) -> ModuleType:
    """The guest agent's source loaded as a module of its own (it is a script, not a package
    member), so unit tests can call its functions."""
    spec = importlib.util.spec_from_file_location(name, AGENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
