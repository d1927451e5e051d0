"""A build-mode VM: boots over the base image with a writable root, runs the install script of
its input disk (adapter.qemu.initramfs's build mode) and powers off; what it installed stays in
its overlay. Environment builds (adapter.qemu.environment) make their disks this way."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from adapter.qemu.boot_plan import BootPlan
from adapter.qemu.initramfs import BUILD_MARKER, BUILD_MODE, MODE_PARAM
from adapter.qemu.launcher import VmLauncher
from adapter.qemu.vm import VmDir, VmMeta, new_vm_id
from domain.errors import EnvironmentBuildError

# pip in the build VM unpacks wheels in memory: more than a sandbox's default.
_BUILD_MEMORY_MB = 512


def run_build_vm(
    launcher: VmLauncher,
    plan: BootPlan,
    instance_id: str,
    work_dir: Path,
    input_disk: Path,
    timeout_s: float,
) -> Path:
    """Run a build VM under ``work_dir`` with ``input_disk`` as its second disk; its overlay (a
    qcow2 over the base with the result). EnvironmentBuildError when the script failed."""
    spec = replace(
        plan.spec,
        memory_mb=max(plan.spec.memory_mb, _BUILD_MEMORY_MB),
        kernel_cmdline=f"{plan.spec.kernel_cmdline} {MODE_PARAM}={BUILD_MODE}",
        extra_disk=input_disk,
    )
    vm_dir = VmDir(work_dir / new_vm_id())
    vm_dir.create(VmMeta(vm_dir.vm_id, instance_id, None, None, purpose="build"), plan.image.base)
    try:
        console = launcher.run_to_exit(vm_dir, plan.image, spec, timeout_s)
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
