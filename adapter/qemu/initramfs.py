"""The microVM's busybox initramfs: load the virtio modules, mount the root, start the agent.

The cpio archive is written here (newc format) rather than with the ``cpio`` tool, so building it
needs nothing beyond busybox-static and the extracted kernel modules, and the same inputs always
give the same bytes (fixed mtimes and owners), which keeps its content hash stable.
"""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Load order matters: no modules.dep ships in the initramfs, so dependencies come first.
VIRTIO_MODULES = ("virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console")

AGENT_PORT_NAME = "sandboxd.agent"
AGENT_PATH = "/opt/sandboxd/agent.py"
SANDBOX_USER = "sandbox"
# A VM has no pids cgroup: the agent caps the sandbox user's processes with RLIMIT_NPROC instead
# (as many as the container runtime's pids limit allows), so a fork bomb cannot starve the agent.
MAX_PROCESSES = 128
# /tmp is small as in the container. /workspace is a tmpfs of a quarter of the guest's memory:
# the preloaded interpreter (numpy, pandas, matplotlib) holds about 100 MiB more, and a workspace
# filled to the kernel's default half of a 256 MiB guest made the OOM killer take the
# interpreter before the writer ever saw ENOSPC.
TMP_SIZE = "32m"
WORKSPACE_SIZE = "25%"
PRELOAD_PARAM = "sandboxd.preload"
MODE_PARAM = "sandboxd.mode"
BUILD_MODE = "build"
BUILD_SCRIPT = "install.sh"
BUILD_MARKER = "sandboxd-build: exit "

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {" ".join(VIRTIO_MODULES)}; do
    insmod /lib/modules/$m.ko || echo "sandboxd-init: insmod $m failed"
done
fail() {{ echo "sandboxd-init: $*"; poweroff -f; }}
wait_disk() {{
    i=0
    while [ ! -b "$1" ]; do
        i=$((i + 1)); [ $i -gt 500 ] && fail "no $1"; sleep 0.01
    done
}}
# Settings from the host, on the kernel command line (part of the snapshot key): the modules the
# agent's first python imports before the snapshot is taken, and the build mode.
preload=""
mode=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        {PRELOAD_PARAM}=*) preload="${{arg#{PRELOAD_PARAM}=}}" ;;
        {MODE_PARAM}=*) mode="${{arg#{MODE_PARAM}=}}" ;;
    esac
done
wait_disk /dev/vda
if [ "$mode" = "{BUILD_MODE}" ]; then
    # Environment build: the only mode with a writable root. /dev/vdb (read-only) carries the
    # host-fetched artifacts and {BUILD_SCRIPT}; its exit status goes to the console.
    wait_disk /dev/vdb
    mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "cannot mount root"
    mount -t ext4 -o ro /dev/vdb /newroot/mnt || fail "cannot mount the build input"
    mount -t proc proc /newroot/proc
    mount -t devtmpfs devtmpfs /newroot/dev
    mount -t tmpfs -o size=256m tmpfs /newroot/tmp
    chroot /newroot /bin/sh /mnt/{BUILD_SCRIPT}
    echo "{BUILD_MARKER}$?"
    umount /newroot/tmp /newroot/dev /newroot/proc /newroot/mnt
    umount /newroot || mount -o remount,ro /newroot
    sync
    poweroff -f
fi
# Read-only root: the disk never changes, so a memory snapshot restores onto any fresh overlay.
# nosuid,nodev: no file on it can raise privileges or open a device, whatever the image holds.
mount -t ext4 -o ro,noatime,nosuid,nodev /dev/vda /newroot || fail "cannot mount root"
mount -t tmpfs -o size={TMP_SIZE},mode=1777,nosuid,nodev tmpfs /newroot/tmp \\
    || fail "cannot mount /tmp"
ids=$(awk -F: '$1 == "{SANDBOX_USER}" {{ print $3 ":" $4 }}' /newroot/etc/passwd)
[ -n "$ids" ] || ids=0:0
mount -t tmpfs -o size={WORKSPACE_SIZE},mode=0755,nosuid,nodev,uid=${{ids%:*}},gid=${{ids#*:}} \\
    tmpfs /newroot/workspace \\
    || fail "cannot mount /workspace"
port=""
i=0
while [ -z "$port" ]; do
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat $p/name 2>/dev/null)" = "{AGENT_PORT_NAME}" ] && port=/dev/${{p##*/}}
    done
    i=$((i + 1)); [ -z "$port" ] && [ $i -gt 500 ] && fail "no agent port"
    [ -z "$port" ] && sleep 0.01
done
while [ ! -c "$port" ]; do sleep 0.01; done
mkdir -p /dev/shm
mount -t tmpfs -o size={TMP_SIZE},mode=1777,nosuid,nodev tmpfs /dev/shm
# No user namespaces: user code cannot make itself root of one to reach kernel code that is
# otherwise root's (the container runtime's seccomp profile blocks them there).
userns=/proc/sys/user/max_user_namespaces
[ ! -e $userns ] || echo 0 > $userns || fail "cannot disable user namespaces"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
echo "sandboxd-init: starting agent on $port"
# The agent is PID 1: it reaps orphans itself, and the OOM killer never picks PID 1.
exec switch_root /newroot /usr/bin/python3 {AGENT_PATH} --device "$port" --user {SANDBOX_USER} \\
    --max-processes {MAX_PROCESSES} --preload "$preload"
"""


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes = b""


def _newc_header(ino: int, entry: CpioEntry) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        1,  # nlink
        0,  # mtime: fixed so that the archive is reproducible
        len(entry.data),
        0,
        0,
        0,
        0,
        len(name),
        0,
    )
    header = b"070701" + b"".join(f"{value:08X}".encode() for value in fields)
    return header + name


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write_cpio(entries: Iterable[CpioEntry]) -> bytes:
    out = io.BytesIO()
    for ino, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        header = _newc_header(ino, entry)
        out.write(header)
        out.write(_pad4(len(header)))
        out.write(entry.data)
        out.write(_pad4(len(entry.data)))
    return out.getvalue()


def build_initramfs(busybox: Path, modules_dir: Path, destination: Path) -> None:
    """Write a gzip'd newc archive with /init, busybox and the flat virtio modules."""
    directory = stat.S_IFDIR | 0o755
    entries = [
        CpioEntry("bin", directory),
        CpioEntry("lib", directory),
        CpioEntry("lib/modules", directory),
        CpioEntry("dev", directory),
        CpioEntry("newroot", directory),
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        CpioEntry("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode()),
    ]
    entries += [
        CpioEntry(
            f"lib/modules/{name}.ko",
            stat.S_IFREG | 0o644,
            (modules_dir / f"{name}.ko").read_bytes(),
        )
        for name in VIRTIO_MODULES
    ]
    archive = write_cpio(entries)
    tmp = destination.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
    tmp.replace(destination)
