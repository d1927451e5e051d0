"""QEMU-specific behaviour: snapshot key and staleness, restore fallback, fresh randomness per
restored VM, stop, and reconciliation after the service was killed. Real QEMU throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from uuid import uuid4

import pytest

from adapter.qemu.snapshot import SnapshotKey, SnapshotStore
from domain.errors import SandboxGoneError
from domain.execution import ExecutionRequest, Language
from repository.sandbox_lock import ProcessLocalSandboxLifecycleLocker
from repository.sandbox_session import InMemorySandboxSessionRepository
from testkit.qemu import RuntimeFactory, create_vm, run_ok, started_modes
from usecase.reconcile import ReconcileSandboxes

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[3]


def _snapshot_dir(runtime_data: Path) -> Path:
    dirs = [d for d in (runtime_data / "qemu" / "snapshots").iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


KEY = SnapshotKey(
    image_hash="i", kernel_hash="k", initrd_hash="r", base_hash="b",
    qemu_version="QEMU 7.2", memory_mb=256, vcpus=1, accel="tcg", kernel_cmdline="quiet",
)  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"image_hash": "i2"},
        {"kernel_hash": "k2"},
        {"initrd_hash": "r2"},
        {"base_hash": "b2"},
        {"qemu_version": "QEMU 8.0"},
        {"memory_mb": 512},
        {"vcpus": 2},
        {"accel": "kvm"},
        {"kernel_cmdline": "quiet tsc_early_khz=1"},
    ],
)
def test_snapshot_key_covers_every_input(change: dict[str, object], tmp_path: Path) -> None:
    changed = replace(KEY, **change)  # type: ignore[arg-type]
    assert changed.digest != KEY.digest
    # A key.json that disagrees with the wanted key is reported stale, naming what changed.
    store = SnapshotStore(tmp_path)
    directory = store.directory(changed)
    directory.mkdir(parents=True)
    (directory / "memory.bin").write_bytes(b"x")
    (directory / "key.json").write_text(json.dumps(asdict(KEY)))
    snapshot, reason = store.find(changed)
    assert snapshot is None
    assert next(iter(change)) in reason


def test_snapshot_is_built_once_then_restored(make_runtime: RuntimeFactory) -> None:
    runtime, logger = make_runtime()
    first = create_vm(runtime)
    second = create_vm(runtime)
    assert started_modes(logger) == ["restore", "restore"]
    assert len(logger.named("qemu_snapshot_built")) == 1
    assert run_ok(runtime, second.container_id, "print(6 * 7)") == "42\n"
    assert run_ok(runtime, first.container_id, "print('first')") == "first\n"


def test_stale_snapshot_is_rebuilt_before_use(make_runtime: RuntimeFactory, tmp_path: Path) -> None:
    runtime, _ = make_runtime()
    runtime.prepare_snapshot()
    snapshot = _snapshot_dir(tmp_path / "data")
    key = json.loads((snapshot / "key.json").read_text())
    real_version = key["qemu_version"]
    # As if the snapshot had been taken by another QEMU build: it must not be restored.
    (snapshot / "key.json").write_text(json.dumps({**key, "qemu_version": "QEMU 0.1"}))

    fresh, logger = make_runtime()
    session = create_vm(fresh)
    building = logger.named("qemu_snapshot_building")
    assert len(building) == 1
    assert "qemu_version" in str(building[0]["reason"])
    assert started_modes(logger) == ["restore"]
    assert json.loads((snapshot / "key.json").read_text())["qemu_version"] == real_version
    assert run_ok(fresh, session.container_id, "print('ok')") == "ok\n"


def test_changed_settings_use_another_snapshot(make_runtime: RuntimeFactory) -> None:
    small, _ = make_runtime()
    small.prepare_snapshot()
    bigger, bigger_log = make_runtime(memory_mb=320)
    session = create_vm(bigger)
    assert len(bigger_log.named("qemu_snapshot_built")) == 1
    assert run_ok(bigger, session.container_id, "print(open('/proc/meminfo').readline())")


def test_restore_failure_falls_back_to_cold_boot(
    make_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    runtime, logger = make_runtime()
    runtime.prepare_snapshot()
    memory = _snapshot_dir(tmp_path / "data") / "memory.bin"
    # Same key, unusable content: QEMU fails to load it.
    memory.write_bytes(b"QEVM\0\0\0\3" + os.urandom(4096))

    session = create_vm(runtime)
    failures = logger.named("qemu_restore_failed")
    assert len(failures) == 1
    assert failures[0]["fallback"] == "cold_boot"
    assert failures[0]["reason"]
    assert started_modes(logger) == ["cold"]
    assert run_ok(runtime, session.container_id, "x = 5\nprint(x)") == "5\n"
    assert run_ok(runtime, session.container_id, "print(x * 2)") == "10\n"


def test_restored_vms_get_fresh_randomness(make_runtime: RuntimeFactory) -> None:
    runtime, logger = make_runtime(shared=True)
    vms = [create_vm(runtime), create_vm(runtime)]
    assert started_modes(logger) == ["restore", "restore"]
    code = "import os, random\nprint(os.urandom(16).hex(), random.getrandbits(64))"
    first, second = (run_ok(runtime, vm.container_id, code) for vm in vms)
    kernel_a, python_a = first.split()
    kernel_b, python_b = second.split()
    assert kernel_a != kernel_b
    assert python_a != python_b


def test_guest_clock_is_current_after_restore(make_runtime: RuntimeFactory) -> None:
    runtime, _ = make_runtime(shared=True)
    runtime.prepare_snapshot()
    time.sleep(3)  # the snapshot's clock is now behind by at least this much
    session = create_vm(runtime)
    guest = float(run_ok(runtime, session.container_id, "import time\nprint(time.time())"))
    assert abs(guest - time.time()) < 2.0


def test_guest_isolation_basics(make_runtime: RuntimeFactory) -> None:
    runtime, _ = make_runtime(shared=True)
    session = create_vm(runtime)
    cid = session.container_id
    assert run_ok(runtime, cid, "id -un", language=Language.SHELL) == "sandbox\n"
    assert run_ok(runtime, cid, "console.log(2 ** 10)", language=Language.JAVASCRIPT) == "1024\n"
    # Only a loopback interface: no network device is attached.
    interfaces = run_ok(runtime, cid, "ls /sys/class/net", language=Language.SHELL).split()
    assert interfaces == ["lo"]
    # The root file system is read-only; the workspace is writable.
    denied = runtime.execute(cid, ExecutionRequest(code="touch /usr/x", language=Language.SHELL))
    assert denied.exit_code != 0
    assert (
        run_ok(runtime, cid, "echo hi > /workspace/f && cat /workspace/f", language=Language.SHELL)
        == "hi\n"
    )


def test_stop_is_idempotent_and_removes_everything(make_runtime: RuntimeFactory) -> None:
    runtime, _ = make_runtime(shared=True)
    session = create_vm(runtime)
    vm_dir = runtime.work_dir(session.container_id)
    pid = int((vm_dir / "qemu.pid").read_text())
    assert runtime.is_alive(session.container_id)

    runtime.stop(session.container_id)
    runtime.stop(session.container_id)
    runtime.stop("qvm-00000000000000000000")
    runtime.stop("../../etc")

    assert not vm_dir.exists()
    assert not Path(f"/proc/{pid}").exists()
    assert not runtime.is_alive(session.container_id)
    assert runtime.list_managed() == []
    with pytest.raises(SandboxGoneError):
        runtime.execute(session.container_id, ExecutionRequest(code="print(1)"))


def test_vm_killed_from_outside_is_gone(make_runtime: RuntimeFactory) -> None:
    runtime, _ = make_runtime(shared=True)
    session = create_vm(runtime)
    pid = int((runtime.work_dir(session.container_id) / "qemu.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while runtime.is_alive(session.container_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not runtime.is_alive(session.container_id)
    with pytest.raises(SandboxGoneError):
        runtime.execute(session.container_id, ExecutionRequest(code="print(1)"))
    [managed] = runtime.list_managed()
    assert managed.container_id == session.container_id and not managed.running
    runtime.stop(session.container_id)
    assert runtime.list_managed() == []


def test_reconcile_after_service_killed(
    make_runtime: RuntimeFactory, qemu_image_dir: Path, shared_qemu_data_dir: Path
) -> None:
    data_dir = shared_qemu_data_dir
    instance = f"test-{uuid4().hex[:8]}"
    holder = subprocess.Popen(
        [sys.executable, "-m", "testkit.vm_holder", str(data_dir),
         str(qemu_image_dir), instance],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        container_id = holder.stdout.readline().strip()
        assert container_id.startswith("qvm-"), container_id
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    pid = int((data_dir / "vms" / container_id / "qemu.pid").read_text())
    assert Path(f"/proc/{pid}").exists(), "the VM must outlive the killed service"

    # Another instance's reconciliation leaves it alone.
    other, _ = make_runtime(data_dir=data_dir)
    assert other.list_managed() == []

    runtime, logger = make_runtime(data_dir=data_dir, instance_id=instance)
    [managed] = runtime.list_managed()
    assert managed.container_id == container_id and managed.running
    assert managed.chat_id is not None and managed.session_id is not None
    reconcile = ReconcileSandboxes(
        InMemorySandboxSessionRepository(), ProcessLocalSandboxLifecycleLocker(), runtime, logger
    )
    report = reconcile.execute()
    assert report.removed_orphans == [container_id]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    assert not (data_dir / "vms" / container_id).exists()
    assert runtime.list_managed() == []


def test_two_processes_take_turns_on_one_vm(
    make_runtime: RuntimeFactory, shared_qemu_data_dir: Path
) -> None:
    # QEMU accepts one host connection per VM at a time: a runtime hands an idle one over.
    first, _ = make_runtime(shared=True, handover_poll_s=0.1)
    session = create_vm(first)
    assert run_ok(first, session.container_id, "shared = 'state'\nprint('set')") == "set\n"
    second, _ = make_runtime(data_dir=shared_qemu_data_dir, handover_poll_s=0.1)
    assert run_ok(second, session.container_id, "print(shared)") == "state\n"
    assert run_ok(first, session.container_id, "print(shared * 2)") == "statestate\n"


def test_an_answer_left_by_a_dropped_connection_does_not_break_the_next(
    make_runtime: RuntimeFactory,
) -> None:
    """QEMU gives the guest one stream whatever host connection is open: a ping that timed out
    on a frozen VM is answered once it runs again, on the next connection, whose first request
    must not take that answer for its own (the sandbox would pass for broken and be replaced)."""
    runtime, _ = make_runtime(shared=True)
    session = create_vm(runtime)
    pid = int((Path(runtime._vms_root) / session.container_id / "qemu.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        assert not runtime.ping(session.container_id, 0.5)  # the connection is dropped
    finally:
        os.kill(pid, signal.SIGCONT)
    assert run_ok(runtime, session.container_id, "print(6 * 7)") == "42\n"
    assert runtime.ping(session.container_id, 5.0)
    runtime.stop(session.container_id)
