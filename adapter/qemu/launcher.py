"""VmLauncher: starts a VM's QEMU (cold boot or restore from a memory file), saves a VM's memory,
and destroys VMs. It hands back a RunningVm whose agent connection is ready for requests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from adapter.agent.client import AgentClient
from adapter.qemu.connections import AGENT_MARGIN_S, RunningVm
from adapter.qemu.handshake import handshake
from adapter.qemu.image import QemuImage
from adapter.qemu.process import QemuUser, resolve_qemu_user, start_qemu
from adapter.qemu.qmp import QmpConnection, QmpEventLoop
from adapter.qemu.unix import connect_unix
from adapter.qemu.vm import VmDir, VmSpec, wait_until
from domain.errors import RuntimeUnavailableError, SandboxGoneError
from usecase.ports import Logger

_RESTORE_TIMEOUT_S = 30.0


class RestoreFailedError(Exception):
    """A snapshot restore did not give a ready agent; the caller cold-boots instead."""


class VmLauncher:
    def __init__(
        self, boot_timeout_s: float, user: str | None, log_max_bytes: int, logger: Logger
    ) -> None:
        self._boot_timeout_s = boot_timeout_s
        self._user_name = user
        self._user: QemuUser | None = None
        self._user_resolved = False
        self._log_max_bytes = log_max_bytes
        self._logger = logger
        self._qmp_loop: QmpEventLoop | None = None
        self._lock = threading.Lock()  # the QMP loop and the QEMU user are made once

    def qmp(self, vm_dir: VmDir) -> QmpConnection:
        with self._lock:
            if self._qmp_loop is None:
                self._qmp_loop = QmpEventLoop()
            loop = self._qmp_loop
        return QmpConnection(loop, vm_dir.qmp_socket, vm_dir.vm_id)

    def _start(
        self, spec: VmSpec, image: QemuImage, vm_dir: VmDir, memory: Path | None
    ) -> subprocess.Popen[bytes]:
        with self._lock:
            if not self._user_resolved:
                # Raises while the user is missing: never fall back to running QEMU as root.
                self._user, reason = resolve_qemu_user(self._user_name)
                self._user_resolved = True
                self._logger.info(
                    "qemu_user_selected",
                    {"user": self._user.name if self._user else "", "reason": reason},
                )
        return start_qemu(spec, image, vm_dir, memory, self._user, self._log_max_bytes)

    def close(self) -> None:
        with self._lock:
            loop, self._qmp_loop = self._qmp_loop, None
        if loop is not None:
            loop.close()

    # --- starting ---------------------------------------------------------------------------

    def cold_boot(self, vm_dir: VmDir, image: QemuImage, spec: VmSpec) -> RunningVm:
        process = self._start(spec, image, vm_dir, None)
        vm = RunningVm(vm_dir, process)
        deadline = time.monotonic() + self._boot_timeout_s
        sock: socket.socket | None = None
        try:
            sock = _open_agent_socket(vm, deadline)
            handshake(sock, lambda: _check_starting(vm, deadline))
        except BaseException as exc:
            if sock is not None:
                sock.close()
            _kill_and_reap(process)
            if isinstance(exc, RuntimeUnavailableError):
                raise RuntimeUnavailableError(f"{exc} [{vm_dir.console_tail()}]") from exc
            raise
        vm.client = AgentClient(sock, margin_s=AGENT_MARGIN_S)
        return vm

    def restore(self, vm_dir: VmDir, image: QemuImage, spec: VmSpec, memory: Path) -> RunningVm:
        """Start from a memory snapshot; RestoreFailedError when the VM is not usable."""
        process = self._start(spec, image, vm_dir, memory)
        vm = RunningVm(vm_dir, process)
        deadline = time.monotonic() + _RESTORE_TIMEOUT_S
        sock: socket.socket | None = None
        try:
            # Connected before the memory is loaded: the snapshot was taken with the host
            # connected, so the guest then sees no disconnect/reconnect of its port at all.
            sock = _open_agent_socket(vm, deadline)
            qmp = self.qmp(vm_dir)
            qmp.connect(timeout_s=10.0, still_starting=lambda: process.poll() is None)
            try:
                if _await_incoming(qmp, process, deadline) != "running":
                    # The snapshot was taken from a paused VM; resume it.
                    qmp.execute("cont")
            finally:
                qmp.close()
            answer = handshake(sock, lambda: _check_starting(vm, deadline), reseed=True)
            if answer.get("type") != "reseeded":
                raise RuntimeUnavailableError(f"agent refused the reseed: {answer}")
            if answer.get("ok") is not True:
                # VMs restored from one snapshot share the guest kernel's random state until
                # it is reseeded: an uncredited reseed leaves this VM predictable to its twins.
                raise RuntimeUnavailableError("the guest kernel did not credit the reseed")
            client = AgentClient(sock, margin_s=AGENT_MARGIN_S)
        except (RuntimeUnavailableError, SandboxGoneError) as exc:
            if sock is not None:
                sock.close()
            _kill_and_reap(process)
            raise RestoreFailedError(f"{exc} [{vm_dir.console_tail()}]") from exc
        except BaseException:
            if sock is not None:
                sock.close()
            _kill_and_reap(process)
            raise
        vm.client = client
        return vm

    def run_to_exit(self, vm_dir: VmDir, image: QemuImage, spec: VmSpec, timeout_s: float) -> str:
        """Run a VM that powers itself off (an environment build); its console tail.

        Killed (RuntimeUnavailableError) when it runs past ``timeout_s``."""
        process = self._start(spec, image, vm_dir, None)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            _kill_and_reap(process)
            raise RuntimeUnavailableError(
                f"build VM ran longer than {timeout_s:.0f}s [{vm_dir.console_tail()}]"
            ) from exc
        finally:
            if process.poll() is None:
                _kill_and_reap(process)
        # The console is copied by a thread that sees end of file only now.
        time.sleep(0.3)
        return vm_dir.console_tail(lines=40)

    # --- saving and stopping ----------------------------------------------------------------

    def save_memory(self, vm: RunningVm, memory: Path) -> None:
        """Pause the VM, write its memory to ``memory`` (QMP migrate) and quit it.

        The host stays connected while the memory is saved: the agent is then blocked in a read,
        and answers a restored VM's first request at once (after a host disconnect it would be
        polling for the host to come back)."""
        qmp = self.qmp(vm.dir)
        qmp.connect(timeout_s=10.0, still_starting=lambda: True)
        try:
            qmp.execute("migrate-set-parameters", {"max-bandwidth": 8 << 30})
            qmp.execute("stop")
            # Through a descriptor: QEMU's sandbox denies spawning (no `exec:`), and QEMU need
            # not be able to open the snapshot directory itself.
            fd = os.open(memory, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                qmp.send_fd("snapshot", fd)
            finally:
                os.close(fd)
            qmp.execute("migrate", {"uri": "fd:snapshot"})
            deadline = time.monotonic() + 120.0
            while True:
                info = qmp.execute("query-migrate")
                status = info.get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise RuntimeUnavailableError(
                        f"snapshot migration {status}: {info.get('error-desc', '')}"
                    )
                time.sleep(0.05)
            qmp.execute("quit")
        finally:
            qmp.close()
            vm.drop_client()

    def destroy(self, vm_dir: VmDir, vm: RunningVm | None) -> None:
        """QMP quit, SIGKILL if QEMU lingers, then remove the work directory. Idempotent."""
        if vm is not None:
            vm.drop_client()
        if vm_dir.qemu_pid() is not None:
            try:
                qmp = self.qmp(vm_dir)
                qmp.connect(timeout_s=1.0, still_starting=lambda: False)
                try:
                    qmp.execute("quit", timeout_s=2.0)
                finally:
                    qmp.close()
            except RuntimeUnavailableError:
                pass  # QMP is unresponsive or already gone; the kill below settles it
            if not wait_until(lambda: vm_dir.qemu_pid() is None, timeout_s=3.0):
                vm_dir.kill()
                if not wait_until(lambda: vm_dir.qemu_pid() is None, timeout_s=5.0):
                    raise RuntimeUnavailableError(f"QEMU of {vm_dir.vm_id} survived SIGKILL")
        if vm is not None and vm.process is not None:
            _reap(vm.process)
        shutil.rmtree(vm_dir.path, ignore_errors=True)


def _await_incoming(qmp: QmpConnection, process: subprocess.Popen[bytes], deadline: float) -> str:
    """Wait for the incoming migration to finish; the VM's run state after it."""
    while True:
        status = str(qmp.execute("query-status").get("status", ""))
        if status not in ("inmigrate", "prelaunch"):
            break
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeUnavailableError(f"incoming migration stuck in {status}")
        time.sleep(0.005)
    if status in ("paused", "running"):
        return status
    raise RuntimeUnavailableError(f"VM is {status} after the incoming migration")


def _open_agent_socket(vm: RunningVm, deadline: float) -> socket.socket:
    """Connect to the agent's chardev socket as soon as QEMU has created it."""
    while True:
        _check_starting(vm, deadline)
        try:
            return connect_unix(vm.dir.agent_socket, timeout_s=2.0)
        except OSError:
            time.sleep(0.005)


def _check_starting(vm: RunningVm, deadline: float) -> None:
    if vm.process is not None and vm.process.poll() is not None:
        raise RuntimeUnavailableError(
            f"QEMU exited with status {vm.process.returncode} before the agent was ready"
        )
    if time.monotonic() > deadline:
        raise RuntimeUnavailableError("the agent was not ready in time")


def _kill_and_reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    _reap(process)


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5.0)
