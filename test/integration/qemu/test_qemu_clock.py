"""The guest keeps time with the TSC, cold-booted and restored from a memory snapshot, also when
its vCPU is starved during boot.

Under TCG the guest kernel checks the TSC against jiffies, and a vCPU that waits for a host core
in the first seconds of boot loses timer ticks: the watchdog then marks the TSC unstable and the
guest keeps time with refined-jiffies, in 4 ms steps; a snapshot taken from such a boot hands
that clock to every VM restored from it (boot_plan._kernel_cmdline). A busy host does this to
about every other boot; here the test does it on purpose, stopping the booting QEMU for 5 ms
out of every 16 (without ``tsc=reliable`` both cases fell back to jiffies in 3 of 3 tries)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from testkit.qemu import RuntimeFactory, create_vm, run_ok, started_modes

pytestmark = pytest.mark.qemu

CLOCK_PROBE = """
import json, time
base = "/sys/devices/system/clocksource/clocksource0/"
steps, previous = [], time.monotonic_ns()
while len(steps) < 31:
    now = time.monotonic_ns()
    if now != previous:
        steps.append(now - previous)
        previous = now
print(json.dumps({
    "current": open(base + "current_clocksource").read().strip(),
    "available": open(base + "available_clocksource").read().split(),
    "step_ns": sorted(steps)[15],
}))
"""
STOPPED_S = 0.005
RUNNING_S = 0.011
STARVED_FOR_S = 10.0


@contextmanager
def first_boot_starved(vms_root: Path) -> Iterator[None]:
    """Stop and continue the first QEMU that starts under ``vms_root`` (the snapshot's boot, or
    the cold-booted VM's) for its first seconds, as a host with no free core would."""
    done = threading.Event()
    starved = threading.Event()

    def first_pid() -> int | None:
        # The pid file is created, then written: an empty one is not ready yet.
        for pidfile in sorted(vms_root.glob("*/qemu.pid")):
            text = pidfile.read_text().strip()
            if text:
                return int(text)
        return None

    def starve() -> None:
        deadline = time.monotonic() + 60
        while (pid := first_pid()) is None:
            if done.is_set() or time.monotonic() > deadline:
                return
            time.sleep(0.005)
        starved.set()
        until = time.monotonic() + STARVED_FOR_S
        try:
            while time.monotonic() < until and not done.is_set():
                os.kill(pid, signal.SIGSTOP)
                time.sleep(STOPPED_S)
                os.kill(pid, signal.SIGCONT)
                time.sleep(RUNNING_S)
        except ProcessLookupError:
            return
        finally:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # never leave it stopped

    thread = threading.Thread(target=starve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    # Else the boot ran unstarved and the test would pass without testing anything.
    assert starved.is_set(), "the VM's QEMU was never stopped and continued"


@pytest.mark.parametrize("mode", ["restore", "cold"])
def test_starved_boot_keeps_the_tsc(
    make_runtime: RuntimeFactory, tmp_path: Path, mode: str
) -> None:
    # The test's own data directory: a restore comes from a snapshot of this test's own boot.
    data_dir = tmp_path / "data"
    runtime, logger = make_runtime(data_dir=data_dir, snapshot=mode == "restore")
    with first_boot_starved(data_dir / "vms"):
        session = create_vm(runtime)
    assert started_modes(logger) == [mode]
    clock = json.loads(run_ok(runtime, session.container_id, CLOCK_PROBE))
    assert clock["current"] == "tsc", clock
    assert "tsc" in clock["available"], clock
    # refined-jiffies at HZ=250 advances in 4 ms steps; the TSC in microseconds, even under TCG.
    assert clock["step_ns"] < 1_000_000, clock
