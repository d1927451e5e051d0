"""Which accelerator to use: KVM when a probe boot succeeds, TCG otherwise.

/dev/kvm can exist and still be unusable for a stock kernel (on these machines it only accepts
PVM guests: QEMU hangs or fails setting an MSR). So the probe boots the real guest kernel with no
root file system under KVM and waits for its panic message, which proves the kernel ran. The
verdict is cached on disk per host boot, QEMU version and kernel, so a service restart does not
pay the probe again.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT_S = 6.0
_PROOF = (b"Kernel panic", b"Unable to mount root")


@dataclass(frozen=True)
class AcceleratorChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.splitlines()[0].strip() if out.stdout else ""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def probe_kvm(binary: str, kernel: Path) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    command = [
        binary, "-M", "microvm,accel=kvm", "-m", "128", "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-serial", "stdio", "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 rdinit=/sandboxd-probe",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return False, f"KVM probe boot did not finish in {PROBE_TIMEOUT_S:.0f}s"
    except OSError as exc:
        return False, f"KVM probe could not start QEMU: {exc}"
    output = done.stdout + done.stderr
    if any(proof in output for proof in _PROOF):
        return True, "KVM probe boot reached the kernel"
    last = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return False, f"KVM probe boot failed (exit {done.returncode}): {last[0]}"


def choose_accelerator(
    requested: str, binary: str, kernel: Path, kernel_hash: str, cache_file: Path
) -> AcceleratorChoice:
    """``requested`` is auto|kvm|tcg; auto probes (cached), the other two are taken as given."""
    if requested in ("kvm", "tcg"):
        return AcceleratorChoice(requested, "forced by settings")
    key = f"{_boot_id()}|{qemu_version(binary)}|{kernel_hash}"
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return AcceleratorChoice(cached["accel"], f"cached probe: {cached['reason']}")
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    usable, reason = probe_kvm(binary, kernel)
    choice = AcceleratorChoice("kvm" if usable else "tcg", reason)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "accel": choice.accel, "reason": reason}))
    tmp.replace(cache_file)
    return choice


_TSC_PATTERNS = (
    re.compile(rb"tsc: Refined TSC clocksource calibration: (\d+\.\d+) MHz"),
    re.compile(rb"tsc: Detected (\d+\.\d+) MHz"),
)


@functools.cache
def host_tsc_khz() -> int | None:
    """The host's TSC frequency, which is also the TCG guest's (TCG reads the host's TSC).

    Handed to the guest kernel (tsc_early_khz) so it does not calibrate the TSC against the
    emulated PIT: on a busy host that calibration fails now and then, and the kernel then hangs
    in early boot. None when the host does not say; the guest calibrates then.
    """
    found = _tsc_from_kernel_log()
    if found:
        return found
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)
    # Without a constant TSC, "cpu MHz" is a momentary clock speed, not the TSC's.
    if flags and mhz and "constant_tsc" in flags.group(1).split():
        return round(float(mhz.group(1)) * 1000)
    return None


def _tsc_from_kernel_log() -> int | None:
    try:
        descriptor = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    best: dict[int, int] = {}
    try:
        for _ in range(100_000):
            try:
                record = os.read(descriptor, 8192)
            except BlockingIOError:
                break
            except OSError:
                continue  # EPIPE: records were overwritten while reading; keep going
            if not record:
                break
            for rank, pattern in enumerate(_TSC_PATTERNS):
                match = pattern.search(record)
                if match:
                    best.setdefault(rank, round(float(match.group(1)) * 1000))
    finally:
        os.close(descriptor)
    return best[min(best)] if best else None
