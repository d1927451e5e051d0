"""The VMs this process talks to, each with at most one agent connection, handed over on request.

QEMU serves one host connection per VM at a time. A process that wants a VM touches
``agent.want`` in its work dir before connecting; every other process that holds a connection
checks that file every ``poll_s`` and closes its connection, when idle, if someone asked after it
connected. So several processes (the service, a CLI call, another replica) take turns on a VM
without waiting for each other to exit.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from adapter.agent.client import AgentClient
from adapter.qemu.handshake import resync
from adapter.qemu.unix import connect_unix
from adapter.qemu.vm import VM_ID_PATTERN, VmDir
from domain.errors import RuntimeUnavailableError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult
from usecase.ports import OutputSink

T = TypeVar("T")


@dataclass
class RunningVm:
    """What this process knows about a running VM beyond its work directory."""

    dir: VmDir
    process: subprocess.Popen[bytes] | None = None
    client: AgentClient | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    connected_at: float = field(default_factory=time.time)
    # vm.json rewrites (adapter.qemu.rebinds) against the VM's removal.
    meta_lock: threading.Lock = field(default_factory=threading.Lock)
    removed: bool = False

    def drop_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()


class AgentConnections:
    """VMs by id, their agent connections, and the handover thread (see the module docstring)."""

    def __init__(self, vms_root: Path, poll_s: float | None) -> None:
        self._vms_root = vms_root
        self._poll_s = poll_s
        self._vms: dict[str, RunningVm] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._handover: threading.Thread | None = None

    def add(self, vm: RunningVm) -> None:
        with self._lock:
            self._vms[vm.dir.vm_id] = vm
        self._start_handover()

    def pop(self, vm_id: str) -> RunningVm | None:
        with self._lock:
            return self._vms.pop(vm_id, None)

    def known(self, vm_id: str) -> RunningVm | None:
        with self._lock:
            return self._vms.get(vm_id)

    def execute(
        self,
        vm_id: str,
        request: ExecutionRequest,
        max_output_bytes: int,
        on_output: OutputSink | None,
    ) -> ExecutionResult:
        return self.with_agent(
            vm_id, lambda client: client.execute(request, max_output_bytes, on_output)
        )

    def with_agent(self, vm_id: str, action: Callable[[AgentClient], T]) -> T:
        """Lend the VM's agent connection for one operation (an execution, files, ping,
        reseed), under the VM's lock; dropped when the agent is gone."""
        vm = self._get_or_adopt(vm_id)
        self._start_handover()
        with vm.lock:
            if vm.client is None:
                vm.client = _connect_agent(vm.dir)
                vm.connected_at = time.time()
            try:
                return action(vm.client)
            except SandboxGoneError:
                vm.drop_client()
                raise

    def close(self) -> None:
        """Stop handing over and close every connection; the VMs keep running."""
        self._closing.set()
        with self._lock:
            vms = list(self._vms.values())
        for vm in vms:
            vm.drop_client()

    def _get_or_adopt(self, vm_id: str) -> RunningVm:
        with self._lock:
            vm = self._vms.get(vm_id)
            if vm is not None:
                return vm
            if not VM_ID_PATTERN.match(vm_id):
                raise SandboxGoneError(f"no microVM {vm_id!r}")
            vm_dir = VmDir(self._vms_root / vm_id)
            if vm_dir.qemu_pid() is None:
                raise SandboxGoneError(f"microVM {vm_id} is not running")
            # Started by an earlier service process: adopt it, connecting on first use.
            vm = RunningVm(vm_dir)
            self._vms[vm_id] = vm
            return vm

    def _start_handover(self) -> None:
        if self._poll_s is None or self._handover is not None:
            return
        with self._lock:
            if self._handover is None:
                self._handover = threading.Thread(
                    target=self._hand_over, name="sandboxd-qemu-handover", daemon=True
                )
                self._handover.start()

    def _hand_over(self) -> None:
        assert self._poll_s is not None
        while not self._closing.wait(self._poll_s):
            with self._lock:
                vms = [vm for vm in self._vms.values() if vm.client is not None]
            for vm in vms:
                try:
                    wanted_at = vm.dir.want_file.stat().st_mtime
                except OSError:
                    continue
                # Never in the middle of a request: a busy VM is looked at on the next round.
                if wanted_at > vm.connected_at and vm.lock.acquire(blocking=False):
                    try:
                        vm.drop_client()
                    finally:
                        vm.lock.release()


# Past an execution's own timeout, how long a VM's agent may take to kill and sweep what the
# code left, then answer: under TCG a fork bomb's sweep alone took seconds on a loaded host.
AGENT_MARGIN_S = 30.0


def _connect_agent(vm_dir: VmDir) -> AgentClient:
    # Ask whoever holds the VM's only connection to let go (see the module docstring).
    with contextlib.suppress(OSError):
        vm_dir.want_file.touch()
    try:
        sock = connect_unix(vm_dir.agent_socket, timeout_s=5.0)
    except OSError as exc:
        raise SandboxGoneError(f"microVM {vm_dir.vm_id} agent unreachable: {exc}") from exc
    try:
        resync(sock)
    except RuntimeUnavailableError as exc:
        sock.close()
        raise SandboxGoneError(f"microVM {vm_dir.vm_id} agent unreachable: {exc}") from exc
    return AgentClient(sock, margin_s=AGENT_MARGIN_S)
