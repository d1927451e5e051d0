"""QemuSandboxRuntime: sandboxes as QEMU microVMs, controlled over QMP.

Each sandbox is ``qemu-system-x86_64 -M microvm`` with the shared read-only base image under a
fresh qcow2 overlay, the guest agent on a virtio-serial port, and no network device. New VMs are
restored from a memory snapshot of a booted, agent-ready VM (``-incoming``) when one is valid for
the current key, and cold-booted otherwise; any restore failure falls back to a cold boot and is
logged with its reason. After a restore the agent gets fresh host entropy, so VMs restored from
one snapshot do not share randomness.

QEMU itself runs confined (adapter.qemu.process): seccomp sandbox with spawning denied, an
unprivileged user, no file access of its own, console and log output capped.

The work is split: BootPlanner decides what a VM boots (image set, accelerator, environment
disk, snapshot key); VmLauncher starts, saves and destroys VMs; SnapshotLifecycle keeps a valid
snapshot; AgentConnections holds the agent connections and hands them over between processes;
OverlayPool keeps qcow2 overlays ready; adapter.qemu.build_vm runs environment builds. This
class puts them together behind the port and lists this instance's VMs for reconciliation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID

from adapter.agent.client import AgentClient
from adapter.qemu.boot_plan import BootPlan, BootPlanner
from adapter.qemu.build_vm import run_build_vm
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.connections import AgentConnections, RunningVm
from adapter.qemu.envdisk import EnvironmentDisks
from adapter.qemu.image import QemuImage, qemu_dir
from adapter.qemu.launcher import RestoreFailedError, VmLauncher
from adapter.qemu.overlay_pool import OverlayPool
from adapter.qemu.rebinds import MetaRewrites
from adapter.qemu.snapshot import SnapshotLifecycle, SnapshotStore
from adapter.qemu.vm import VM_ID_PATTERN, VmDir, VmMeta, new_vm_id
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
        self._planner = BootPlanner(config, logger)
        # Same filesystem as the VM dirs, so that handing out an overlay is a link.
        self._overlays = OverlayPool(
            config.data_dir / "overlay-pool", config.overlay_pool_size, logger
        )
        self._launcher = VmLauncher(
            config.boot_timeout_s, config.user, config.log_max_bytes, logger
        )
        self._connections = AgentConnections(config.vms_root, config.handover_poll_s)
        self._rebinds = MetaRewrites(logger)
        self._snapshots = SnapshotLifecycle(
            SnapshotStore(qemu_dir(config.data_dir) / "snapshots"),
            self._launcher,
            config.vms_root,
            config.instance_id,
            logger,
        )

    # --- port -------------------------------------------------------------------------------

    def create(
        self,
        *,
        session_id: UUID,
        chat_id: UUID,
        created_at: datetime,
        expires_at: datetime,
        environment_key: str | None = None,
    ) -> SandboxSession:
        """The port's create; with ``environment_key`` the VM boots from that environment's disk
        (built by QemuEnvironmentStore; RuntimeUnavailableError when it is not on this host),
        restored from the environment's own memory snapshot."""
        plan = self._planner.plan(environment_key)
        vm_id = new_vm_id()
        vm_dir = VmDir(self._vms_root / vm_id)
        started = time.monotonic()
        try:
            vm_dir.create(
                VmMeta(vm_id, self._config.instance_id, session_id, chat_id, purpose="sandbox"),
                plan.spec.backing(plan.image.base),
                # Pooled overlays are made over the base image: an environment's VM gets its own.
                self._overlays.acquirer(plan.image.base) if plan.environment is None else None,
            )
            vm, mode = self._start(vm_dir, plan)
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
                "accel": plan.spec.accel,
                "environment": environment_key or "",
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
        if vm is not None:
            self._rebinds.forget(vm)
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

    def rebind(self, session: SandboxSession) -> None:
        """SandboxRebinder: vm.json names the claiming chat; SandboxGoneError when the VM's
        QEMU has exited (the member is then discarded, the chat served on demand).

        A VM this process started gets its vm.json rewritten after the claim, off the path of
        the chat's first result (adapter.qemu.rebinds says why that is safe); any other now.
        No second reseed: the member got its own entropy and the host's clock when it was
        restored (the launcher's handshake, credited or the VM is discarded), no code has run in
        it since but the pool's warm-up, and a running guest keeps its clock. A reseed here cost
        a guest round trip through the interpreters (about 180 ms under TCG) on every claim."""
        vm = self._connections.known(session.container_id)
        if vm is not None and vm.process is not None:
            if vm.process.poll() is not None:
                raise SandboxGoneError(f"microVM {session.container_id} has exited")
            self._rebinds.submit(vm, session)
            return
        vm_dir = VmDir(self._vms_root / session.container_id)
        meta = vm_dir.read_meta() if VM_ID_PATTERN.match(session.container_id) else None
        if meta is None:
            raise SandboxGoneError(f"microVM {session.container_id} is gone")
        try:
            vm_dir.rewrite_meta(
                dataclasses.replace(meta, session_id=session.session_id, chat_id=session.chat_id)
            )
        except OSError as exc:
            raise RuntimeUnavailableError(f"cannot rebind {session.container_id}: {exc}") from exc

    def ping(self, container_id: str, timeout_s: float) -> bool:
        """SandboxHealthProbe: True when the VM's agent answers within ``timeout_s``."""
        try:
            self._connections.with_agent(container_id, lambda agent: agent.ping(timeout_s))
        except (SandboxGoneError, RuntimeUnavailableError, OSError):
            return False
        return True

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

    def prepare_snapshot(self, environment_key: str | None = None) -> str:
        """Make sure a valid snapshot exists (used by ``image build``, the environment store and
        the benchmark); its memory file, or "" when it could not be taken."""
        plan = self._planner.plan(environment_key)
        snapshot = self._snapshots.ensure(plan.image, plan.spec, plan.snapshot_key)
        return str(snapshot.memory_file) if snapshot else ""

    def image(self) -> QemuImage:
        """The image set of this runtime's own inputs, built first when missing and allowed."""
        return self._planner.image()

    @property
    def environment_disks(self) -> EnvironmentDisks:
        return self._planner.environment_disks

    def run_build_vm(self, work_dir: Path, input_disk: Path, timeout_s: float) -> Path:
        """Boot a VM in build mode over the base image (adapter.qemu.build_vm): writable root,
        ``input_disk`` as the second disk, its install script run, then powered off. The VM's
        overlay is returned; EnvironmentBuildError when the script failed."""
        return run_build_vm(
            self._launcher,
            self._planner.plan(),
            self._config.instance_id,
            work_dir,
            input_disk,
            timeout_s,
        )

    def work_dir(self, container_id: str) -> Path:
        """Where the VM's overlay, sockets, pidfile, logs and vm.json live."""
        return self._vms_root / container_id

    @property
    def accelerator(self) -> str:
        return self._planner.plan().spec.accel

    def close(self) -> None:
        """Release host-side connections; VMs keep running (stop them with ``stop``)."""
        self._rebinds.close()
        self._connections.close()
        self._launcher.close()
        self._overlays.stop()

    def _start(self, vm_dir: VmDir, plan: BootPlan) -> tuple[RunningVm, str]:
        image, spec = plan.image, plan.spec
        if self._config.snapshot:
            snapshot = self._snapshots.ensure(image, spec, plan.snapshot_key)
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
                    vm_dir.new_overlay(spec.backing(image.base))
        return self._launcher.cold_boot(vm_dir, image, spec), "cold"


def _recent(path: Path, max_age_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < max_age_s
    except OSError:
        return False
