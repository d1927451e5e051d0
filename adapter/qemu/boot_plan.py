"""BootPlanner: what a new VM boots, before anything is started.

A BootPlan is the image set (built first when missing and allowed), the VM's hardware and kernel
command line (VmSpec, with the accelerator probed once per kernel), the environment disk layered
over the base image when the sandbox wants one, and the key its memory snapshot is stored under.
Everything here is decided on the host; VmLauncher then starts what the plan says.
"""

from __future__ import annotations

import re
import shutil
import threading
from dataclasses import dataclass, replace

from adapter.image.rootfs import RootfsBuildError, build_rootfs, rootfs_hash
from adapter.qemu.accel import AcceleratorChoice, choose_accelerator, host_tsc_khz, qemu_version
from adapter.qemu.config import QemuSandboxConfig
from adapter.qemu.envdisk import EnvironmentDisk, EnvironmentDisks
from adapter.qemu.image import QemuImage, build_qemu_image, load_qemu_image, qemu_dir
from adapter.qemu.initramfs import PRELOAD_PARAM
from adapter.qemu.snapshot import SnapshotKey
from adapter.qemu.vm import KERNEL_CMDLINE, VmSpec
from domain.environment import is_cache_key
from domain.errors import RuntimeUnavailableError
from usecase.ports import Logger

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class BootPlan:
    image: QemuImage
    spec: VmSpec
    environment: EnvironmentDisk | None
    snapshot_key: SnapshotKey


class BootPlanner:
    """Boot plans for one runtime's configuration (see the module docstring)."""

    def __init__(self, config: QemuSandboxConfig, logger: Logger) -> None:
        self._config = config
        self._logger = logger
        self.environment_disks = EnvironmentDisks(qemu_dir(config.data_dir) / "environments")
        self._prepare_lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._rootfs_hash: str | None = None
        self._accel: dict[str, AcceleratorChoice] = {}  # by kernel hash
        self._qemu_version = ""

    def plan(self, environment_key: str | None = None) -> BootPlan:
        """The plan for a sandbox over the base image, or over ``environment_key``'s disk (built
        by QemuEnvironmentStore; RuntimeUnavailableError when it is not on this host)."""
        image, spec = self._base()
        environment = None
        if environment_key is not None:
            environment = self._environment(environment_key, image)
            spec = replace(spec, layers=(environment.disk,))
        return BootPlan(image, spec, environment, self._snapshot_key(image, spec, environment))

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

    def _environment(self, environment_key: str, image: QemuImage) -> EnvironmentDisk:
        if not is_cache_key(environment_key):
            raise RuntimeUnavailableError(f"not an environment key: {environment_key!r}")
        environment, reason = self.environment_disks.load(environment_key, image.base)
        if environment is None:
            # The store (QemuEnvironmentStore.ensure) builds it; the runtime only boots it.
            raise RuntimeUnavailableError(
                f"environment {environment_key} is not usable on this host: {reason}"
            )
        self.environment_disks.touch(environment_key)
        return environment

    def _base(self) -> tuple[QemuImage, VmSpec]:
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
        self, image: QemuImage, spec: VmSpec, environment: EnvironmentDisk | None
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


def _kernel_cmdline(accel: str, preload: tuple[str, ...]) -> str:
    cmdline = KERNEL_CMDLINE
    if accel == "tcg":
        # TCG's TSC is the host's (constant and nonstop), but the guest kernel checks it against
        # its only other clocksource, jiffies: when the emulated vCPU waits for a host core in the
        # first seconds of boot, timer ticks are late or lost, the watchdog sees a "skew" and
        # marks the TSC unstable. The guest then keeps time with refined-jiffies (HZ=250): its
        # clocks, sleeps and poll timeouts move in 4 ms steps, and a memory snapshot taken from
        # such a boot hands that to every VM restored from it (3 of 6 cold boots on a busy
        # 2-core host; none of 6 with this). Under KVM the guest uses kvm-clock instead.
        cmdline += " tsc=reliable"
        tsc_khz = host_tsc_khz()
        if tsc_khz:
            cmdline += f" tsc_early_khz={tsc_khz}"
    modules = [name for name in preload if _MODULE_NAME.fullmatch(name)]
    if len(modules) != len(preload):
        raise RuntimeUnavailableError(f"invalid module names to preload: {preload!r}")
    return f"{cmdline} {PRELOAD_PARAM}={','.join(modules)}" if modules else cmdline
