"""QEMU itself is confined (issue 11, item 4): seccomp sandbox with spawning denied, an
unprivileged user, console and QEMU logs capped, and a reseed the guest kernel did not credit
is an error. Each test is the attack or failure, run against real QEMU."""

from __future__ import annotations

import pwd
import time
from pathlib import Path

import pytest

from adapter.qemu import launcher
from adapter.qemu.accel import host_tsc_khz
from adapter.qemu.handshake import handshake as real_handshake
from adapter.qemu.image import load_qemu_image
from adapter.qemu.process import resolve_qemu_user, start_qemu
from adapter.qemu.vm import VmDir, VmMeta, VmSpec
from domain.execution import Language
from testkit.qemu import RuntimeFactory, create_vm, run_ok, started_modes

pytestmark = pytest.mark.qemu

QEMU_USER = "sandboxd-qemu"
LOG_CAP = 64 * 1024


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def test_qemu_runs_under_seccomp_as_unprivileged_user(make_runtime: RuntimeFactory) -> None:
    runtime, logger = make_runtime(shared=True)
    session = create_vm(runtime)
    pid = int((runtime.work_dir(session.container_id) / "qemu.pid").read_text())
    status = _status(pid)
    # Seccomp mode 2: a filter is installed (QEMU's -sandbox); with spawn=deny the snapshot
    # restore must still work (no `exec:` migration).
    assert status["Seccomp"] == "2"
    assert set(status["Uid"].split()) == {str(pwd.getpwnam(QEMU_USER).pw_uid)}
    assert set(status["Gid"].split()) == {str(pwd.getpwnam(QEMU_USER).pw_gid)}
    assert started_modes(logger) == ["restore"]
    assert run_ok(runtime, session.container_id, "print('confined')") == "confined\n"


def _live_processes_naming(path: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue
        if str(path).encode() in cmdline and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def _written_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar")


def test_console_flood_cannot_fill_the_disk(qemu_image_dir: Path, tmp_path: Path) -> None:
    image = load_qemu_image(qemu_image_dir)
    assert image is not None
    vm_dir = VmDir(tmp_path / "qvm-00000000000000000001")
    vm_dir.create(VmMeta(vm_dir.vm_id, "test-flood", None, None), image.base)
    # A guest whose init prints to the serial console in a loop, as fast as it can.
    tsc = host_tsc_khz()
    timer = f"tsc_early_khz={tsc} " if tsc else ""
    spec = VmSpec(
        "qemu-system-x86_64", "tcg", 128, 1, f"console=ttyS0 {timer}rdinit=/bin/busybox -- yes x"
    )
    user, _ = resolve_qemu_user(QEMU_USER)
    process = start_qemu(spec, image, vm_dir, None, user, LOG_CAP)
    try:
        deadline = time.monotonic() + 120
        while _written_bytes(process.pid) < 8 * LOG_CAP:
            assert process.poll() is None, vm_dir.console_tail()
            assert time.monotonic() < deadline, "the guest did not flood"
            time.sleep(0.2)
    finally:
        process.kill()
        process.wait()
    # The guest wrote 8 caps' worth; the host kept the latest output, at most two files' worth.
    assert vm_dir.console_file.stat().st_size <= LOG_CAP
    assert vm_dir.path.joinpath("console.log.1").stat().st_size <= LOG_CAP
    assert b"x\r\nx\r\nx\r\n" in vm_dir.console_file.read_bytes()


def test_uncredited_reseed_discards_the_restored_vm(
    make_runtime: RuntimeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, logger = make_runtime(shared=True)
    runtime.prepare_snapshot()

    def uncredited(*args: object, **kwargs: object) -> dict[str, object]:
        answer = real_handshake(*args, **kwargs)  # type: ignore[arg-type]
        # As a guest whose kernel refused RNDADDENTROPY/RNDRESEEDCRNG would answer.
        return {**answer, "ok": False} if kwargs.get("reseed") else answer

    monkeypatch.setattr(launcher, "handshake", uncredited)
    session = create_vm(runtime)
    [failure] = logger.named("qemu_restore_failed")
    assert "did not credit" in str(failure["reason"])
    assert started_modes(logger) == ["cold"]
    assert run_ok(runtime, session.container_id, "print('fresh')") == "fresh\n"
    # The restored VM was discarded: one QEMU process (the cold-booted one) for the work dir.
    assert len(_live_processes_naming(runtime.work_dir(session.container_id))) == 1


def test_agent_reports_an_uncredited_reseed(make_runtime: RuntimeFactory) -> None:
    # User code is not root: the same function the agent runs for a reseed must say "not
    # credited" there, instead of claiming success after mixing bytes into /dev/urandom.
    runtime, _ = make_runtime(shared=True)
    session = create_vm(runtime)
    code = (
        "import importlib.util as u\n"
        "s = u.spec_from_file_location('agent', '/opt/sandboxd/agent.py')\n"
        "m = u.module_from_spec(s); s.loader.exec_module(m)\n"
        "print(m._add_kernel_entropy(b'x' * 64))"
    )
    assert run_ok(runtime, session.container_id, code) == "False\n"
    assert run_ok(runtime, session.container_id, "id -u", language=Language.SHELL) != "0\n"
