"""One microVM's work directory and QEMU process.

``<data_dir>/vms/<vm id>/`` holds the qcow2 overlay, the QMP and agent sockets, QEMU's pidfile,
its log and console output, and ``vm.json`` (vm id, session id, chat id, instance id). That is
all reconciliation needs to find and kill a VM with no live record, also after the service that
started it was killed (QEMU runs in its own session and outlives it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from domain.errors import RuntimeUnavailableError

VM_ID_PATTERN = re.compile(r"^qvm-[0-9a-f]{20}$")
KERNEL_CMDLINE = "console=ttyS0 quiet panic=-1"


@dataclass(frozen=True)
class VmSpec:
    """Everything that shapes the guest's hardware; a snapshot only restores onto the same spec.

    ``layers``: read-only qcow2 layers over the base image, lowest first (an environment's
    disk); the VM's overlay sits on the last one. ``extra_disk``: a raw disk attached read-only
    as the second virtio-blk device (an environment build's input).
    """

    binary: str
    accel: str
    memory_mb: int
    vcpus: int
    kernel_cmdline: str = KERNEL_CMDLINE
    layers: tuple[Path, ...] = ()
    extra_disk: Path | None = None

    def backing(self, base: Path) -> Path:
        """The disk a VM's overlay is created over."""
        return self.layers[-1] if self.layers else base


@dataclass(frozen=True)
class VmMeta:
    vm_id: str
    instance_id: str
    session_id: UUID | None
    chat_id: UUID | None
    purpose: str = "sandbox"  # or "snapshot": the VM a memory snapshot is taken from

    def to_json(self) -> str:
        return json.dumps(
            {
                "vm_id": self.vm_id,
                "instance_id": self.instance_id,
                "session_id": str(self.session_id) if self.session_id else None,
                "chat_id": str(self.chat_id) if self.chat_id else None,
                "purpose": self.purpose,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> VmMeta:
        raw = json.loads(text)
        return cls(
            vm_id=str(raw["vm_id"]),
            instance_id=str(raw["instance_id"]),
            session_id=UUID(raw["session_id"]) if raw.get("session_id") else None,
            chat_id=UUID(raw["chat_id"]) if raw.get("chat_id") else None,
            purpose=str(raw.get("purpose", "sandbox")),
        )


class VmDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def vm_id(self) -> str:
        return self.path.name

    overlay = property(lambda self: self.path / "overlay.qcow2")
    qmp_socket = property(lambda self: self.path / "qmp.sock")
    agent_socket = property(lambda self: self.path / "agent.sock")
    pidfile = property(lambda self: self.path / "qemu.pid")
    meta_file = property(lambda self: self.path / "vm.json")
    want_file = property(lambda self: self.path / "agent.want")
    log_file = property(lambda self: self.path / "qemu.log")
    console_file = property(lambda self: self.path / "console.log")

    def create(
        self, meta: VmMeta, base: Path, overlay: Callable[[Path, Path], None] | None = None
    ) -> None:
        """``overlay(base, target)`` places the overlay (the overlay pool); default: qemu-img."""
        # The record of ownership goes first, so a crash right after still leaves a findable VM.
        self.path.mkdir(parents=True)
        tmp = self.meta_file.with_suffix(".tmp")
        tmp.write_text(meta.to_json())
        tmp.replace(self.meta_file)
        if overlay is None:
            self.new_overlay(base)
        else:
            overlay(base, self.overlay)

    def new_overlay(self, base: Path) -> None:
        self.overlay.unlink(missing_ok=True)
        try:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                 str(self.overlay)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise RuntimeUnavailableError(f"qemu-img create failed: {detail.strip()}") from exc

    def rewrite_meta(self, meta: VmMeta) -> None:
        """Replace vm.json atomically (a pooled VM handed to its chat)."""
        tmp = self.meta_file.with_suffix(".tmp")
        tmp.write_text(meta.to_json())
        tmp.replace(self.meta_file)

    def read_meta(self) -> VmMeta | None:
        try:
            return VmMeta.from_json(self.meta_file.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def qemu_pid(self) -> int | None:
        """The pid of this VM's QEMU if it is running (not a zombie, and really ours)."""
        pid = self.read_pid()
        if pid is None:
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Pids get reused: only a process whose command line names our work dir is ours.
        if str(self.path).encode() not in cmdline:
            return None
        state = status.rsplit(")", 1)[-1].split()[0]
        return None if state in ("Z", "X") else pid

    def kill(self) -> None:
        pid = self.qemu_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def console_tail(self, lines: int = 5) -> str:
        texts = []
        for path in (self.log_file, self.console_file):
            try:
                texts += path.read_text(errors="replace").strip().splitlines()[-lines:]
            except OSError:
                continue
        return " | ".join(texts)


def new_vm_id() -> str:
    return f"qvm-{secrets.token_hex(10)}"


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True
