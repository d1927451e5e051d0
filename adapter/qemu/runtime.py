"""QemuSandboxRuntime: sandboxes as QEMU microVMs, controlled over QMP.

Each sandbox is ``qemu-system-x86_64 -M microvm`` with the shared read-only base image under a
fresh qcow2 overlay, the guest agent on a virtio-serial port, and no network device. New VMs are
restored from a memory snapshot of a booted, agent-ready VM (``-incoming``) when one is valid for
the current key, and cold-booted otherwise; any restore failure falls back to a cold boot and is
logged with its reason. After a restore the agent gets fresh host entropy, so VMs restored from
one snapshot do not share randomness.

QEMU itself runs confined (adapter.qemu.process): seccomp sandbox with spawning denied, an
unprivileged user, no file access of its own, console and log output capped.

The work is split: VmLauncher starts, saves and destroys VMs; SnapshotLifecycle keeps a valid
snapshot; AgentConnections holds the agent connections and hands them over between processes.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID

from adapter.agent.client import AgentClient
from adapter.qemu.accel import AcceleratorChoice, choose_accelerator, host_tsc_khz, qemu_version
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.connections import AgentConnections, RunningVm
from adapter.qemu.image import QemuImage, load_qemu_image, qemu_dir
from adapter.qemu.launcher import RestoreFailedError, VmLauncher
from adapter.qemu.snapshot import SnapshotKey, SnapshotLifecycle, SnapshotStore
from adapter.qemu.vm import KERNEL_CMDLINE, VM_ID_PATTERN, VmDir, VmMeta, VmSpec, new_vm_id
from domain.errors import RuntimeUnavailableError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult
from domain.sandbox import ManagedSandbox, SandboxSession, SandboxStatus
from usecase.ports import Logger, OutputSink

T = TypeVar("T")

RUNTIME_KIND = "qemu"
# A snapshot build takes seconds; a builder VM older than this was left behind by a crash.
_SNAPSHOT_BUILD_MAX_S = 600.0


class QemuSandboxRuntime:
    """SandboxRuntime port on QEMU microVMs (see the module docstring)."""

    def __init__(self, config: QemuSandboxConfig, logger: Logger) -> None:
        self._config = config
        self._logger = logger
        self._vms_root = config.vms_root
        self._launcher = VmLauncher(
            config.boot_timeout_s, config.user, config.log_max_bytes, logger
        )
        self._connections = AgentConnections(config.vms_root, config.handover_poll_s)
        self._snapshots = SnapshotLifecycle(
            SnapshotStore(qemu_dir(config.data_dir) / "snapshots"),
            self._launcher,
            config.vms_root,
            config.instance_id,
            logger,
        )
        self._prepare_lock = threading.Lock()
        self._accel: dict[str, AcceleratorChoice] = {}  # by kernel hash
        self._qemu_version = ""

    # --- port -------------------------------------------------------------------------------

    def create(
        self, *, session_id: UUID, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession:
        image, spec = self._prepare()
        vm_id = new_vm_id()
        vm_dir = VmDir(self._vms_root / vm_id)
        started = time.monotonic()
        try:
            vm_dir.create(
                VmMeta(vm_id, self._config.instance_id, session_id, chat_id, purpose="sandbox"),
                image.base,
            )
            vm, mode = self._start(vm_dir, image, spec)
        except OSError as exc:
            self._launcher.destroy(vm_dir, None)
            raise RuntimeUnavailableError(f"cannot start microVM {vm_id}: {exc}") from exc
        except BaseException:
            self._launcher.destroy(vm_dir, None)
            raise
        self._connections.add(vm)
        self._logger.info(
            "qemu_vm_started",
            {
                "container_id": vm_id,
                "session_id": str(session_id),
                "chat_id": str(chat_id),
                "mode": mode,
                "accel": spec.accel,
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        return SandboxSession(
            session_id=session_id,
            chat_id=chat_id,
            container_id=vm_id,
            status=SandboxStatus.RUNNING,
            created_at=created_at,
            expires_at=expires_at,
            runtime_kind=RUNTIME_KIND,
        )

    def stop(self, container_id: str) -> None:
        if not VM_ID_PATTERN.match(container_id):
            return  # not one of ours: nothing of that name can exist
        vm = self._connections.pop(container_id)
        self._launcher.destroy(VmDir(self._vms_root / container_id), vm)

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        return self._connections.execute(
            container_id, request, self._config.max_output_bytes, on_output
        )

    def with_agent(self, container_id: str, action: Callable[[AgentClient], T]) -> T:
        """Lend the VM's agent connection (files, see adapter.agent.files)."""
        if not VM_ID_PATTERN.match(container_id):
            raise SandboxGoneError(f"no microVM {container_id!r}")
        return self._connections.with_agent(container_id, action)

    def is_alive(self, container_id: str) -> bool:
        if not VM_ID_PATTERN.match(container_id):
            return False
        vm_dir = VmDir(self._vms_root / container_id)
        vm = self._connections.known(container_id)
        if vm is not None and vm.process is not None and vm.process.poll() is not None:
            return False
        return vm_dir.meta_file.exists() and vm_dir.qemu_pid() is not None

    def list_managed(self) -> list[ManagedSandbox]:
        managed: list[ManagedSandbox] = []
        try:
            entries = sorted(self._vms_root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RuntimeUnavailableError(f"cannot list {self._vms_root}: {exc}") from exc
        for entry in entries:
            if not VM_ID_PATTERN.match(entry.name) or self._snapshots.is_builder(entry.name):
                continue
            vm_dir = VmDir(entry)
            meta = vm_dir.read_meta()
            if meta is None or meta.instance_id != self._config.instance_id:
                continue
            if meta.purpose == "snapshot" and _recent(vm_dir.meta_file, _SNAPSHOT_BUILD_MAX_S):
                continue  # another process is taking a snapshot from it right now
            managed.append(
                ManagedSandbox(
                    container_id=entry.name,
                    session_id=meta.session_id,
                    chat_id=meta.chat_id,
                    running=self.is_alive(entry.name),
                )
            )
        return managed

    # --- beyond the port --------------------------------------------------------------------

    def prepare_snapshot(self) -> str:
        """Make sure a valid snapshot exists (used by ``image build`` and the benchmark)."""
        image, spec = self._prepare()
        snapshot = self._snapshots.ensure(image, spec, self._snapshot_key(image, spec))
        return str(snapshot.memory_file) if snapshot else ""

    def work_dir(self, container_id: str) -> Path:
        """Where the VM's overlay, sockets, pidfile, logs and vm.json live."""
        return self._vms_root / container_id

    @property
    def accelerator(self) -> str:
        return self._prepare()[1].accel

    def close(self) -> None:
        """Release host-side connections; VMs keep running (stop them with ``stop``)."""
        self._connections.close()
        self._launcher.close()

    # --- internals --------------------------------------------------------------------------

    def _prepare(self) -> tuple[QemuImage, VmSpec]:
        config = self._config
        image = load_qemu_image(config.images)
        if image is None:
            raise RuntimeUnavailableError(
                "no QEMU image has been built; run `sandboxd image build --runtime qemu`"
            )
        with self._prepare_lock:
            if shutil.which(config.qemu_binary) is None:
                raise RuntimeUnavailableError(f"{config.qemu_binary} is not installed")
            if not self._qemu_version:
                self._qemu_version = qemu_version(config.qemu_binary)
            choice = self._accel.get(image.kernel_hash)
            if choice is None:
                choice = choose_accelerator(
                    config.accel,
                    config.qemu_binary,
                    image.kernel,
                    image.kernel_hash,
                    qemu_dir(config.images) / "accel.json",
                )
                self._accel[image.kernel_hash] = choice
                self._logger.info(
                    "qemu_accelerator_selected", {"accel": choice.accel, "reason": choice.reason}
                )
        return image, VmSpec(
            config.qemu_binary,
            choice.accel,
            config.memory_mb,
            config.vcpus,
            _kernel_cmdline(choice.accel),
        )

    def _snapshot_key(self, image: QemuImage, spec: VmSpec) -> SnapshotKey:
        return SnapshotKey(
            image_hash=image.image_hash,
            kernel_hash=image.kernel_hash,
            initrd_hash=image.initrd_hash,
            base_hash=image.base_hash,
            qemu_version=self._qemu_version,
            memory_mb=spec.memory_mb,
            vcpus=spec.vcpus,
            accel=spec.accel,
            kernel_cmdline=spec.kernel_cmdline,
        )

    def _start(self, vm_dir: VmDir, image: QemuImage, spec: VmSpec) -> tuple[RunningVm, str]:
        if self._config.snapshot:
            snapshot = self._snapshots.ensure(image, spec, self._snapshot_key(image, spec))
            if snapshot is not None:
                try:
                    vm = self._launcher.restore(vm_dir, image, spec, snapshot.memory_file)
                    return vm, "restore"
                except RestoreFailedError as exc:
                    self._logger.warning(
                        "qemu_restore_failed",
                        {"container_id": vm_dir.vm_id, "reason": str(exc), "fallback": "cold_boot"},
                    )
                    # The failed guest may have written to its overlay; start from a clean one.
                    vm_dir.new_overlay(image.base)
        return self._launcher.cold_boot(vm_dir, image, spec), "cold"


def _recent(path: Path, max_age_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < max_age_s
    except OSError:
        return False


def _kernel_cmdline(accel: str) -> str:
    tsc_khz = host_tsc_khz() if accel == "tcg" else None
    return f"{KERNEL_CMDLINE} tsc_early_khz={tsc_khz}" if tsc_khz else KERNEL_CMDLINE
