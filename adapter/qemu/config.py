"""QemuSandboxConfig: everything the QEMU runtime is configured with, in one frozen value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class QemuSandboxConfig:
    """MicroVM settings; the defaults are the hardened ones.

    ``data_dir`` holds VM work dirs and snapshots; ``image_dir`` (default: data_dir) the built
    image sets (``sandboxd image build --runtime qemu``). The runtime boots the set of
    ``rootfs_hash``; None means the hash of this checkout's agent and package list
    (adapter.image.rootfs.rootfs_hash). With ``build_image`` a missing set of the local inputs
    is built on first use (debootstrap needs root; minutes), under the builders' file locks.

    ``handover_poll_s``: QEMU serves one host connection per VM at a time, and a second process
    (a CLI call, another replica taking its turn on the chat) is only accepted once the first
    lets go. A process that wants a VM touches ``agent.want`` in its work dir before connecting;
    every other process checks that file this often and closes its connection, when idle, if
    someone asked after it connected. None never hands over.
    """

    data_dir: Path
    instance_id: str
    image_dir: Path | None = None
    rootfs_hash: str | None = None
    build_image: bool = True
    # 512 as the container runtime: an idle restored VM costs the host about the same as at 256
    # (untouched guest memory is never allocated), and the preloaded interpreter below leaves
    # user code and a fork bomb's page tables room (entrypoint.settings.QemuSettings).
    memory_mb: int = 512
    vcpus: int = 1
    accel: str = "auto"
    snapshot: bool = True
    max_output_bytes: int = 1024 * 1024
    qemu_binary: str = "qemu-system-x86_64"
    boot_timeout_s: float = 60.0
    handover_poll_s: float | None = 0.1
    # QEMU runs as this user when the service is root (None: as the service's own user); see
    # adapter.qemu.process. scripts/setup.sh qemu creates it.
    user: str | None = "sandboxd-qemu"
    # Console and QEMU log: each file at most this big, one older file kept (adapter.qemu.logcap).
    log_max_bytes: int = 1024 * 1024
    # Imported by the guest's python before the memory snapshot is taken, so a chat's first
    # ``import pandas, matplotlib.pyplot`` costs nothing (20-40 s under TCG otherwise, most of it
    # executing the modules, not reading them). Costs ~110 MiB host RSS per idle VM.
    preload: tuple[str, ...] = ("numpy", "pandas", "matplotlib.pyplot")
    # qcow2 overlays kept ready per base image (adapter.qemu.overlay_pool); 0 disables the pool.
    overlay_pool_size: int = 0

    @property
    def images(self) -> Path:
        return self.image_dir or self.data_dir

    @property
    def vms_root(self) -> Path:
        return self.data_dir / "vms"
