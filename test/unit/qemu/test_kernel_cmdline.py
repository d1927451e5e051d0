"""The guest kernel's command line per accelerator (adapter.qemu.boot_plan._kernel_cmdline)."""

from __future__ import annotations

import pytest

from adapter.qemu import boot_plan
from adapter.qemu.boot_plan import _kernel_cmdline
from adapter.qemu.vm import KERNEL_CMDLINE
from domain.errors import RuntimeUnavailableError


@pytest.fixture(autouse=True)
def host_tsc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boot_plan, "host_tsc_khz", lambda: 2596118)


def test_tcg_guest_trusts_its_tsc_and_gets_the_host_frequency() -> None:
    words = _kernel_cmdline("tcg", ()).split()
    assert words[: len(KERNEL_CMDLINE.split())] == KERNEL_CMDLINE.split()
    # Without tsc=reliable the guest's clocksource watchdog drops the TSC on a busy host.
    assert "tsc=reliable" in words
    assert "tsc_early_khz=2596118" in words


def test_tcg_without_a_known_host_frequency_still_trusts_the_tsc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(boot_plan, "host_tsc_khz", lambda: None)
    words = _kernel_cmdline("tcg", ()).split()
    assert "tsc=reliable" in words
    assert not [word for word in words if word.startswith("tsc_early_khz=")]


def test_kvm_guest_keeps_the_kernels_own_clock_choice() -> None:
    # kvm-clock is the guest's clocksource under KVM; the TSC stays watched there.
    assert _kernel_cmdline("kvm", ()) == KERNEL_CMDLINE


def test_preload_goes_last_and_bad_module_names_are_refused() -> None:
    cmdline = _kernel_cmdline("tcg", ("numpy", "matplotlib.pyplot"))
    assert cmdline.endswith(" sandboxd.preload=numpy,matplotlib.pyplot")
    with pytest.raises(RuntimeUnavailableError):
        _kernel_cmdline("kvm", ("numpy", "os; reboot"))
