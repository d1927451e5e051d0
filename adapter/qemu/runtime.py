"""QemuSandboxRuntime: sandboxes as QEMU microVMs, controlled over QMP.

Each sandbox is ``qemu-system-x86_64 -M microvm`` with the shared read-only base image under a
fresh qcow2 overlay, the guest agent on a virtio-serial port, and no network device. New VMs are
restored from a memory snapshot of a booted, agent-ready VM (``-incoming``) when one is valid for
the current key, and cold-booted otherwise; any restore failure falls back to a cold boot and is
logged with its reason. After a restore the agent gets fresh host entropy, so VMs restored from
one snapshot do not share randomness.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import shlex
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from uuid import UUID

from filelock import FileLock

from adapter.agent.client import AgentClient
from adapter.qemu.accel import (
    AcceleratorChoice,
    choose_accelerator,
    host_tsc_khz,
    qemu_version,
)
from adapter.qemu.image import QemuImage, load_qemu_image, qemu_dir
from adapter.qemu.qmp import QmpConnection, QmpEventLoop
from adapter.qemu.snapshot import Snapshot, SnapshotKey, SnapshotStore
from adapter.qemu.unix import connect_unix
from adapter.qemu.vm import (
    KERNEL_CMDLINE,
    VM_ID_PATTERN,
    VmDir,
    VmMeta,
    VmSpec,
    qemu_command,
    start_qemu,
    wait_until,
)
from domain.errors import RuntimeUnavailableError, SandboxGoneError
from domain.execution import ExecutionRequest, ExecutionResult
from domain.sandbox import ManagedSandbox, SandboxSession, SandboxStatus
from usecase.ports import Logger, OutputSink

RUNTIME_KIND = "qemu"
# A snapshot build takes seconds; a builder VM older than this was left behind by a crash.
_SNAPSHOT_BUILD_MAX_S = 600.0
_WARM_UP = "import random as _sandboxd_warm_up\ndel _sandboxd_warm_up\n"


class RestoreFailedError(Exception):
    """A snapshot restore did not give a ready agent; the caller cold-boots instead."""


@dataclass
class _Vm:
    """What this process knows about a running VM beyond its work directory."""

    dir: VmDir
    process: subprocess.Popen[bytes] | None = None
    client: AgentClient | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    connected_at: float = field(default_factory=time.time)


class QemuSandboxRuntime:
    """SandboxRuntime port on QEMU microVMs (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        instance_id: str,
        logger: Logger,
        memory_mb: int = 256,
        vcpus: int = 1,
        accel: str = "auto",
        snapshot: bool = True,
        max_output_bytes: int = 1024 * 1024,
        qemu_binary: str = "qemu-system-x86_64",
        boot_timeout_s: float = 60.0,
        image_dir: Path | None = None,
        handover_poll_s: float | None = 0.1,
    ) -> None:
        """``data_dir`` holds VM work dirs and snapshots; ``image_dir`` (default: data_dir) the
        built image set from ``sandboxd image build --runtime qemu``.

        ``handover_poll_s``: QEMU serves one host connection per VM at a time, and a second
        process (a CLI call, another replica taking its turn on the chat) is only accepted once
        the first lets go. A process that wants a VM touches ``agent.want`` in its work dir
        before connecting; every other process checks that file this often and closes its
        connection, when idle, if someone asked after it connected. None never hands over."""
        self._data_dir = data_dir
        self._image_dir = image_dir or data_dir
        self._vms_root = data_dir / "vms"
        self._instance_id = instance_id
        self._logger = logger
        self._memory_mb = memory_mb
        self._vcpus = vcpus
        self._accel_setting = accel
        self._snapshot_enabled = snapshot
        self._max_output_bytes = max_output_bytes
        self._binary = qemu_binary
        self._boot_timeout_s = boot_timeout_s
        self._snapshots = SnapshotStore(qemu_dir(data_dir) / "snapshots")
        self._vms: dict[str, _Vm] = {}
        self._vms_lock = threading.Lock()
        self._prepare_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._accel: dict[str, AcceleratorChoice] = {}  # by kernel hash
        self._qemu_version = ""
        self._snapshot_builders: set[str] = set()
        self._qmp_loop: QmpEventLoop | None = None
        self._handover_poll_s = handover_poll_s
        self._closing = threading.Event()
        self._handover: threading.Thread | None = None

    # --- port -------------------------------------------------------------------------------

    def create(
        self, *, session_id: UUID, chat_id: UUID, created_at: datetime, expires_at: datetime
    ) -> SandboxSession:
        image, spec = self._prepare()
        vm_id = _new_vm_id()
        vm_dir = VmDir(self._vms_root / vm_id)
        started = time.monotonic()
        try:
            vm_dir.create(
                VmMeta(vm_id, self._instance_id, session_id, chat_id, purpose="sandbox"),
                image.base,
            )
            vm, mode = self._start(vm_dir, image, spec)
        except OSError as exc:
            self._destroy(vm_dir, None)
            raise RuntimeUnavailableError(f"cannot start microVM {vm_id}: {exc}") from exc
        except BaseException:
            self._destroy(vm_dir, None)
            raise
        with self._vms_lock:
            self._vms[vm_id] = vm
        self._start_handover()
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
        with self._vms_lock:
            vm = self._vms.pop(container_id, None)
        self._destroy(VmDir(self._vms_root / container_id), vm)

    def execute(
        self, container_id: str, request: ExecutionRequest, on_output: OutputSink | None = None
    ) -> ExecutionResult:
        vm = self._vm(container_id)
        self._start_handover()
        with vm.lock:
            if vm.client is None:
                vm.client = self._connect_agent(vm.dir)
                vm.connected_at = time.time()
            try:
                return vm.client.execute(request, self._max_output_bytes, on_output)
            except SandboxGoneError:
                self._drop_client(vm)
                raise

    def is_alive(self, container_id: str) -> bool:
        if not VM_ID_PATTERN.match(container_id):
            return False
        vm_dir = VmDir(self._vms_root / container_id)
        with self._vms_lock:
            vm = self._vms.get(container_id)
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
            if not VM_ID_PATTERN.match(entry.name) or entry.name in self._snapshot_builders:
                continue
            vm_dir = VmDir(entry)
            meta = vm_dir.read_meta()
            if meta is None or meta.instance_id != self._instance_id:
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
        snapshot = self._ensure_snapshot(image, spec)
        return str(snapshot.memory_file) if snapshot else ""

    def work_dir(self, container_id: str) -> Path:
        """Where the VM's overlay, sockets, pidfile, logs and vm.json live."""
        return self._vms_root / container_id

    @property
    def accelerator(self) -> str:
        return self._prepare()[1].accel

    def close(self) -> None:
        """Release host-side connections; VMs keep running (stop them with ``stop``)."""
        self._closing.set()
        with self._vms_lock:
            vms = list(self._vms.values())
        for vm in vms:
            self._drop_client(vm)
        if self._qmp_loop is not None:
            self._qmp_loop.close()
            self._qmp_loop = None

    def _start_handover(self) -> None:
        if self._handover_poll_s is None or self._handover is not None:
            return
        with self._vms_lock:
            if self._handover is None:
                self._handover = threading.Thread(
                    target=self._hand_over_connections, name="sandboxd-qemu-handover", daemon=True
                )
                self._handover.start()

    def _hand_over_connections(self) -> None:
        assert self._handover_poll_s is not None
        while not self._closing.wait(self._handover_poll_s):
            with self._vms_lock:
                vms = [vm for vm in self._vms.values() if vm.client is not None]
            for vm in vms:
                try:
                    wanted_at = vm.dir.want_file.stat().st_mtime
                except OSError:
                    continue
                # Never in the middle of a request: a busy VM is looked at on the next round.
                if wanted_at > vm.connected_at and vm.lock.acquire(blocking=False):
                    try:
                        self._drop_client(vm)
                    finally:
                        vm.lock.release()

    # --- preparation ------------------------------------------------------------------------

    def _prepare(self) -> tuple[QemuImage, VmSpec]:
        image = load_qemu_image(self._image_dir)
        if image is None:
            raise RuntimeUnavailableError(
                "no QEMU image has been built; run `sandboxd image build --runtime qemu`"
            )
        with self._prepare_lock:
            if shutil.which(self._binary) is None:
                raise RuntimeUnavailableError(f"{self._binary} is not installed")
            if not self._qemu_version:
                self._qemu_version = qemu_version(self._binary)
            choice = self._accel.get(image.kernel_hash)
            if choice is None:
                choice = choose_accelerator(
                    self._accel_setting,
                    self._binary,
                    image.kernel,
                    image.kernel_hash,
                    qemu_dir(self._image_dir) / "accel.json",
                )
                self._accel[image.kernel_hash] = choice
                self._logger.info(
                    "qemu_accelerator_selected", {"accel": choice.accel, "reason": choice.reason}
                )
        return image, VmSpec(
            self._binary, choice.accel, self._memory_mb, self._vcpus, _kernel_cmdline(choice.accel)
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

    def _qmp(self, vm_dir: VmDir) -> QmpConnection:
        with self._prepare_lock:
            if self._qmp_loop is None:
                self._qmp_loop = QmpEventLoop()
            loop = self._qmp_loop
        return QmpConnection(loop, vm_dir.qmp_socket, vm_dir.vm_id)

    # --- starting VMs -----------------------------------------------------------------------

    def _start(self, vm_dir: VmDir, image: QemuImage, spec: VmSpec) -> tuple[_Vm, str]:
        if self._snapshot_enabled:
            snapshot = self._ensure_snapshot(image, spec)
            if snapshot is not None:
                try:
                    return self._restore(vm_dir, image, spec, snapshot), "restore"
                except RestoreFailedError as exc:
                    self._logger.warning(
                        "qemu_restore_failed",
                        {"container_id": vm_dir.vm_id, "reason": str(exc), "fallback": "cold_boot"},
                    )
                    # The failed guest may have written to its overlay; start from a clean one.
                    vm_dir.new_overlay(image.base)
        return self._cold_boot(vm_dir, image, spec), "cold"

    def _cold_boot(self, vm_dir: VmDir, image: QemuImage, spec: VmSpec) -> _Vm:
        process = start_qemu(qemu_command(spec, image, vm_dir, incoming=None), vm_dir)
        vm = _Vm(vm_dir, process)
        deadline = time.monotonic() + self._boot_timeout_s
        sock: socket.socket | None = None
        try:
            sock = self._open_agent_socket(vm, deadline)
            self._handshake(vm, sock, deadline)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            _kill_and_reap(process)
            if isinstance(exc, RuntimeUnavailableError):
                raise RuntimeUnavailableError(f"{exc} [{vm_dir.console_tail()}]") from exc
            raise
        vm.client = AgentClient(sock)
        return vm

    def _restore(self, vm_dir: VmDir, image: QemuImage, spec: VmSpec, snapshot: Snapshot) -> _Vm:
        process = start_qemu(qemu_command(spec, image, vm_dir, snapshot.memory_file), vm_dir)
        vm = _Vm(vm_dir, process)
        deadline = time.monotonic() + 30.0
        sock: socket.socket | None = None
        try:
            # Connected before the memory is loaded: the snapshot was taken with the host
            # connected, so the guest then sees no disconnect/reconnect of its port at all.
            sock = self._open_agent_socket(vm, deadline)
            qmp = self._qmp(vm_dir)
            qmp.connect(timeout_s=10.0, still_starting=lambda: process.poll() is None)
            try:
                if self._await_incoming(qmp, process, deadline) != "running":
                    # The snapshot was taken from a paused VM; resume it.
                    qmp.execute("cont")
            finally:
                qmp.close()
            answer = self._handshake(vm, sock, deadline, reseed=True)
            if answer.get("type") != "reseeded":
                raise RuntimeUnavailableError(f"agent refused the reseed: {answer}")
            if answer.get("ok") is not True:
                self._logger.warning("qemu_reseed_not_credited", {"container_id": vm_dir.vm_id})
            client = AgentClient(sock)
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

    def _await_incoming(
        self, qmp: QmpConnection, process: subprocess.Popen[bytes], deadline: float
    ) -> str:
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

    def _open_agent_socket(self, vm: _Vm, deadline: float) -> socket.socket:
        """Connect to the agent's chardev socket as soon as QEMU has created it."""
        while True:
            _check_starting(vm, deadline)
            try:
                return connect_unix(vm.dir.agent_socket, timeout_s=2.0)
            except OSError:
                time.sleep(0.005)

    def _handshake(
        self, vm: _Vm, sock: socket.socket, deadline: float, reseed: bool = False
    ) -> dict[str, object]:
        """Wait until the agent answers a ping, drain stale answers; the last answer.

        QEMU holds what we send until the guest opens its port, so one ping normally suffices;
        it is repeated now and then in case a guest driver dropped it. Pongs to earlier pings can
        arrive late, so a last request with a fresh id is answered before the connection is
        handed over to the AgentClient. With ``reseed`` that last request is the reseed a
        restored VM needs, carrying fresh entropy and the host's clock (the guest's clock stood
        still in the snapshot; an agent that predates the "now" field ignores it).
        """
        try:
            reader = _LineReader(sock)
            attempt = 0
            ready = False
            while not ready:
                _check_starting(vm, deadline)
                attempt += 1
                sock.settimeout(5.0)
                sock.sendall(json.dumps({"id": f"ready-{attempt}", "op": "ping"}).encode() + b"\n")
                resend_at = time.monotonic() + 1.0
                while not ready and time.monotonic() < resend_at:
                    _check_starting(vm, deadline)
                    ready = any(frame.get("type") == "pong" for frame in reader.frames(0.1))
            sync_id = f"ready-sync-{secrets.token_hex(4)}"
            final: dict[str, object] = {"id": sync_id, "op": "ping"}
            if reseed:
                entropy = base64.b64encode(secrets.token_bytes(64)).decode("ascii")
                final = {"id": sync_id, "op": "reseed", "entropy": entropy, "now": time.time()}
            sock.settimeout(5.0)
            sock.sendall(json.dumps(final).encode() + b"\n")
            sync_deadline = time.monotonic() + 10.0
            while True:
                for frame in reader.frames(0.1):
                    if frame.get("id") == sync_id:
                        sock.settimeout(None)
                        return frame
                _check_starting(vm, deadline)
                if time.monotonic() > sync_deadline:
                    raise RuntimeUnavailableError("agent stopped answering during start")
        except OSError as exc:
            raise RuntimeUnavailableError(f"agent connection failed: {exc!r}") from exc

    # --- snapshots --------------------------------------------------------------------------

    def _ensure_snapshot(self, image: QemuImage, spec: VmSpec) -> Snapshot | None:
        key = self._snapshot_key(image, spec)
        snapshot, reason = self._snapshots.find(key)
        if snapshot is not None:
            return snapshot
        with self._snapshot_lock:
            self._snapshots.root.mkdir(parents=True, exist_ok=True)
            # Other processes (a second service, the CLI) build the same snapshot: one at a time.
            with FileLock(str(self._snapshots.lock_path(key))):
                snapshot, reason = self._snapshots.find(key)
                if snapshot is not None:
                    return snapshot
                self._logger.info(
                    "qemu_snapshot_building", {"key": key.digest[:16], "reason": reason}
                )
                started = time.monotonic()
                try:
                    snapshot = self._build_snapshot(image, spec, key)
                except (RuntimeUnavailableError, SandboxGoneError, OSError) as exc:
                    self._logger.warning(
                        "qemu_snapshot_failed",
                        {"key": key.digest[:16], "error": str(exc), "fallback": "cold_boot"},
                    )
                    return None
                self._logger.info(
                    "qemu_snapshot_built",
                    {
                        "key": key.digest[:16],
                        "bytes": snapshot.memory_file.stat().st_size,
                        "duration_s": round(time.monotonic() - started, 3),
                    },
                )
                return snapshot

    def _build_snapshot(self, image: QemuImage, spec: VmSpec, key: SnapshotKey) -> Snapshot:
        staging = self._snapshots.staging(key)
        vm_dir = VmDir(self._vms_root / _new_vm_id())
        self._snapshot_builders.add(vm_dir.vm_id)
        try:
            vm_dir.create(
                VmMeta(vm_dir.vm_id, self._instance_id, None, None, purpose="snapshot"),
                image.base,
            )
            vm = self._cold_boot(vm_dir, image, spec)
            assert vm.client is not None
            # One execution so the snapshot holds a python interpreter that has run code already,
            # with the module the agent's reseed needs imported (a slow import under TCG).
            vm.client.execute(ExecutionRequest(code=_WARM_UP, timeout_s=30.0), 1024, None)
            # The host stays connected while the memory is saved: the agent is then blocked in a
            # read, and answers a restored VM's first request at once (after a host disconnect it
            # would be polling for the host to come back).
            qmp = self._qmp(vm_dir)
            qmp.connect(timeout_s=10.0, still_starting=lambda: True)
            try:
                memory = staging / "memory.bin"
                qmp.execute("migrate-set-parameters", {"max-bandwidth": 8 << 30})
                qmp.execute("stop")
                qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(memory))}"})
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
                self._drop_client(vm)
            return self._snapshots.commit(key, staging)
        finally:
            self._snapshot_builders.discard(vm_dir.vm_id)
            self._destroy(vm_dir, None)
            shutil.rmtree(staging, ignore_errors=True)

    # --- stopping ---------------------------------------------------------------------------

    def _vm(self, container_id: str) -> _Vm:
        with self._vms_lock:
            vm = self._vms.get(container_id)
            if vm is not None:
                return vm
            if not VM_ID_PATTERN.match(container_id):
                raise SandboxGoneError(f"no microVM {container_id!r}")
            vm_dir = VmDir(self._vms_root / container_id)
            if vm_dir.qemu_pid() is None:
                raise SandboxGoneError(f"microVM {container_id} is not running")
            # Started by an earlier service process: adopt it, connecting on first use.
            vm = _Vm(vm_dir)
            self._vms[container_id] = vm
            return vm

    def _connect_agent(self, vm_dir: VmDir) -> AgentClient:
        # Ask whoever holds the VM's only connection to let go (see handover_poll_s).
        with contextlib.suppress(OSError):
            vm_dir.want_file.touch()
        try:
            sock = connect_unix(vm_dir.agent_socket, timeout_s=5.0)
        except OSError as exc:
            raise SandboxGoneError(f"microVM {vm_dir.vm_id} agent unreachable: {exc}") from exc
        sock.settimeout(None)
        return AgentClient(sock)

    def _drop_client(self, vm: _Vm) -> None:
        client, vm.client = vm.client, None
        if client is not None:
            client.close()

    def _destroy(self, vm_dir: VmDir, vm: _Vm | None) -> None:
        """QMP quit, SIGKILL if QEMU lingers, then remove the work directory. Idempotent."""
        if vm is not None:
            self._drop_client(vm)
        if vm_dir.qemu_pid() is not None:
            try:
                qmp = self._qmp(vm_dir)
                qmp.connect(timeout_s=1.0, still_starting=lambda: False)
                try:
                    qmp.execute("quit", timeout_s=2.0)
                finally:
                    qmp.close()
            except RuntimeUnavailableError:
                pass  # QMP is unresponsive or already gone; the kill below settles it
            if not wait_until(lambda: vm_dir.qemu_pid() is None, timeout_s=3.0):
                self._kill_and_wait(vm_dir)
        if vm is not None and vm.process is not None:
            _reap(vm.process)
        shutil.rmtree(vm_dir.path, ignore_errors=True)

    def _kill_and_wait(self, vm_dir: VmDir) -> None:
        vm_dir.kill()
        if not wait_until(lambda: vm_dir.qemu_pid() is None, timeout_s=5.0):
            raise RuntimeUnavailableError(f"QEMU of {vm_dir.vm_id} survived SIGKILL")


def _recent(path: Path, max_age_s: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < max_age_s
    except OSError:
        return False


def _kernel_cmdline(accel: str) -> str:
    tsc_khz = host_tsc_khz() if accel == "tcg" else None
    return f"{KERNEL_CMDLINE} tsc_early_khz={tsc_khz}" if tsc_khz else KERNEL_CMDLINE


def _check_starting(vm: _Vm, deadline: float) -> None:
    if vm.process is not None and vm.process.poll() is not None:
        raise RuntimeUnavailableError(
            f"QEMU exited with status {vm.process.returncode} before the agent was ready"
        )
    if time.monotonic() > deadline:
        raise RuntimeUnavailableError("the agent was not ready in time")


def _new_vm_id() -> str:
    return f"qvm-{secrets.token_hex(10)}"


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


class _LineReader:
    """Newline-delimited JSON frames from a socket, with a bounded wait per call."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def frames(self, wait_s: float) -> list[dict[str, object]]:
        self._sock.settimeout(wait_s)
        try:
            chunk = self._sock.recv(65536)
        except TimeoutError:
            return []
        if not chunk:
            raise RuntimeUnavailableError("agent connection closed")
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        frames: list[dict[str, object]] = []
        for line in lines:
            try:
                frame = json.loads(line)
            except ValueError:
                continue  # a frame cut in half while the port opened
            if isinstance(frame, dict):
                frames.append(frame)
        return frames
