"""The benchmarks' service harness kills the VMs a service left behind, and only those."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from bench.common import remove_vms_left_by


def fake_vm(disk: Path) -> subprocess.Popen[bytes]:
    """A process whose command line looks like one of the service's VMs (named qemu-system,
    a disk under the data directory): it must not be a real VM to be killed like one."""
    script = "import time; time.sleep(600)"
    return subprocess.Popen(
        ["bash", "-c", f'exec -a qemu-system-x86_64 {sys.executable} -c "{script}" {disk}']
    )


def wait_exit(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process.returncode
        time.sleep(0.02)
    return None


def test_a_vm_that_outlived_the_service_is_killed_and_another_services_vm_is_not(
    tmp_path: Path, capsys
) -> None:
    ours = tmp_path / "ours"
    theirs = tmp_path / "theirs"
    left = fake_vm(ours / "vms" / "qvm-1" / "overlay.qcow2")
    other = fake_vm(theirs / "vms" / "qvm-2" / "overlay.qcow2")
    try:
        time.sleep(0.3)  # the exec has happened: the command line is the VM's
        service = SimpleNamespace(
            data_dir=ours, instance_id="bench-x", log_tail=lambda lines: "last log line"
        )

        killed = remove_vms_left_by(service)

        assert killed == [left.pid]
        assert wait_exit(left) == -9
        assert other.poll() is None
        assert "outlived its stop" in capsys.readouterr().err
    finally:
        for process in (left, other):
            process.kill()
            process.wait()


def test_nothing_left_behind_says_nothing(tmp_path: Path, capsys) -> None:
    service = SimpleNamespace(data_dir=tmp_path, instance_id="bench-x", log_tail=lambda n: "")
    assert remove_vms_left_by(service) == []
    assert capsys.readouterr().err == ""
