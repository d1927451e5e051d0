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

import dataclasses
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID

from adapter.agent.client import AgentClient
from adapter.image.rootfs import RootfsBuildError, build_rootfs, rootfs_hash
from adapter.qemu.accel import AcceleratorChoice, choose_accelerator, host_tsc_khz, qemu_version
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.connections import AgentConnections, RunningVm
from adapter.qemu.envdisk import EnvironmentDisk, EnvironmentDisks
from adapter.qemu.image import QemuImage, build_qemu_image, load_qemu_image, qemu_dir
from adapter.qemu.initramfs import BUILD_MARKER, BUILD_MODE, MODE_PARAM, PRELOAD_PARAM
from adapter.qemu.launcher import RestoreFailedError, VmLauncher
from adapter.qemu.overlay_pool import OverlayPool
from adapter.qemu.snapshot import SnapshotKey, SnapshotLifecycle, SnapshotStore
from adapter.qemu.vm import KERNEL_CMDLINE, VM_ID_PATTERN, VmDir, VmMeta, VmSpec, new_vm_id
from domain.environment import is_cache_key
from domain.errors import EnvironmentBuildError, RuntimeUnavailableError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult
from domain.sandbox import ManagedSandbox, SandboxSession, SandboxStatus
from usecase.ports import Logger, OutputSink

T = TypeVar("T")

RUNTIME_KIND = "qemu"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
# A snapshot build takes seconds; a builder VM older than this was left behind by a crash.
_SNAPSHOT_BUILD_MAX_S = 600.0
# pip in the build VM unpacks wheels in memory: more than a sandbox's default.
_BUILD_MEMORY_MB = 512


class QemuSandboxRuntime:
    """SandboxRuntime port on QEMU microVMs (see the module docstring)."""

    def __init__(self, config: QemuSandboxConfig, logger: Logger) -> None:
        self._config = config
        self._logger = logger
        self._vms_root = config.vms_root
        # Same filesystem as the VM dirs, so that handing out an overlay is a link.
        self._overlays = OverlayPool(
            config.data_dir / "overlay-pool", config.overlay_pool_size, logger
        )
        self._overlays_lock = threading.Lock()
        self._overlay_bases: list[Path] = []
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
        self._build_lock = threading.Lock()
        self._rootfs_hash: str | None = None
        self._disks = EnvironmentDisks(qemu_dir(config.data_dir) / "environments")
        self._accel: dict[str, AcceleratorChoice] = {}  # by kernel hash
        self._qemu_version = ""

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
        image, spec, environment = self._prepare_for(environment_key)
        vm_id = new_vm_id()
        vm_dir = VmDir(self._vms_root / vm_id)
        started = time.monotonic()
        try:
            vm_dir.create(
                VmMeta(vm_id, self._config.instance_id, session_id, chat_id, purpose="sandbox"),
                spec.backing(image.base),
                # Pooled overlays are made over the base image: an environment's VM gets its own.
                self._overlay_for(image.base) if environment is None else None,
            )
            vm, mode = self._start(vm_dir, image, spec, environment)
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
        """SandboxRebinder: vm.json names the claiming chat.

        No second reseed: the member got its own entropy and the host's clock when it was
        restored (the launcher's handshake, credited or the VM is discarded), no code has run in
        it since but the pool's warm-up, and a running guest keeps its clock. A reseed here cost
        a guest round trip through the interpreters (about 180 ms under TCG) on every claim."""
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
        image, spec, environment = self._prepare_for(environment_key)
        key = self._snapshot_key(image, spec, environment)
        snapshot = self._snapshots.ensure(image, spec, key)
        return str(snapshot.memory_file) if snapshot else ""

    @property
    def environment_disks(self) -> EnvironmentDisks:
        return self._disks

    def run_build_vm(self, work_dir: Path, input_disk: Path, timeout_s: float) -> Path:
        """Boot a VM in build mode over the base image: writable root, ``input_disk`` as the
        second disk, its install script run, then powered off. The VM's overlay (a qcow2 over
        the base with the result) is returned; EnvironmentBuildError when the script failed."""
        image, spec = self._prepare()
        build_spec = replace(
            spec,
            memory_mb=max(spec.memory_mb, _BUILD_MEMORY_MB),
            kernel_cmdline=f"{spec.kernel_cmdline} {MODE_PARAM}={BUILD_MODE}",
            extra_disk=input_disk,
        )
        vm_dir = VmDir(work_dir / new_vm_id())
        meta = VmMeta(vm_dir.vm_id, self._config.instance_id, None, None, purpose="build")
        vm_dir.create(meta, image.base)
        try:
            console = self._launcher.run_to_exit(vm_dir, image, build_spec, timeout_s)
        except BaseException:
            vm_dir.kill()
            raise
        status = console.rsplit(BUILD_MARKER, 1)[1].split()[0] if BUILD_MARKER in console else ""
        if status != "0":
            raise EnvironmentBuildError(
                f"install in the build VM failed (exit {status or 'unknown'}): "
                + console.replace(" | ", "\n")[-1500:]
            )
        overlay: Path = vm_dir.overlay
        return overlay

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
        self._overlays.stop()

    def _overlay_for(self, base: Path) -> Callable[[Path, Path], None] | None:
        """The overlay pool's acquire, started for this base on first use; None when disabled."""
        if self._overlays.size == 0:
            return None
        with self._overlays_lock:
            if self._overlay_bases != [base]:
                self._overlays.stop()  # a rebuilt image: the old base's overlays are useless
                self._overlays.start([base])
                self._overlay_bases = [base]
        return self._overlays.acquire

    # --- internals --------------------------------------------------------------------------

    def image(self) -> QemuImage:
        """The image set of this runtime's own inputs, built first when missing and allowed."""
        config = self._config
        wanted = config.rootfs_hash or self._local_rootfs_hash()
        image = load_qemu_image(config.images, wanted)
        if image is not None:
            return image
        if config.rootfs_hash is not None or not config.build_image:
            raise RuntimeUnavailableError(
                f"no QEMU image set for root filesystem {wanted[:16]} in {config.images}; "
                "run `sandboxd image build --runtime qemu`"
            )
        with self._build_lock:
            image = load_qemu_image(config.images, wanted)
            if image is None:
                self._logger.info("qemu_image_building", {"rootfs_hash": wanted[:16]})
                try:
                    rootfs = build_rootfs(config.images)
                except RootfsBuildError as exc:
                    raise RuntimeUnavailableError(f"root filesystem build failed: {exc}") from exc
                image = build_qemu_image(config.images, rootfs.path, rootfs.content_hash)
                self._logger.info("qemu_image_built", {"rootfs_hash": wanted[:16]})
        return image

    def _local_rootfs_hash(self) -> str:
        if self._rootfs_hash is None:
            self._rootfs_hash = rootfs_hash()
        return self._rootfs_hash

    def _prepare_for(
        self, environment_key: str | None
    ) -> tuple[QemuImage, VmSpec, EnvironmentDisk | None]:
        image, spec = self._prepare()
        if environment_key is None:
            return image, spec, None
        if not is_cache_key(environment_key):
            raise RuntimeUnavailableError(f"not an environment key: {environment_key!r}")
        environment, reason = self._disks.load(environment_key, image.base)
        if environment is None:
            # The store (QemuEnvironmentStore.ensure) builds it; the runtime only boots it.
            raise RuntimeUnavailableError(
                f"environment {environment_key} is not usable on this host: {reason}"
            )
        self._disks.touch(environment_key)
        return image, replace(spec, layers=(environment.disk,)), environment

    def _prepare(self) -> tuple[QemuImage, VmSpec]:
        config = self._config
        image = self.image()
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
            _kernel_cmdline(choice.accel, config.preload),
        )

    def _snapshot_key(
        self, image: QemuImage, spec: VmSpec, environment: EnvironmentDisk | None = None
    ) -> SnapshotKey:
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
            environment=f"{environment.key}:{environment.build_id}" if environment else "",
        )

    def _start(
        self, vm_dir: VmDir, image: QemuImage, spec: VmSpec, environment: EnvironmentDisk | None
    ) -> tuple[RunningVm, str]:
        if self._config.snapshot:
            key = self._snapshot_key(image, spec, environment)
            snapshot = self._snapshots.ensure(image, spec, key)
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


def _kernel_cmdline(accel: str, preload: tuple[str, ...]) -> str:
    cmdline = KERNEL_CMDLINE
    tsc_khz = host_tsc_khz() if accel == "tcg" else None
    if tsc_khz:
        cmdline += f" tsc_early_khz={tsc_khz}"
    modules = [name for name in preload if _MODULE_NAME.fullmatch(name)]
    if len(modules) != len(preload):
        raise RuntimeUnavailableError(f"invalid module names to preload: {preload!r}")
    return f"{cmdline} {PRELOAD_PARAM}={','.join(modules)}" if modules else cmdline
