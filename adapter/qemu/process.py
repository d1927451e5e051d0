"""Starting a VM's QEMU process, confined.

- ``-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny``: QEMU's
  seccomp filter. With spawning denied, migration cannot use ``exec:``; the memory snapshot goes
  out and comes back through file descriptors instead (``getfd`` + ``fd:``, ``-incoming fd:N``).
- An unprivileged user (``QemuUser``) when the service runs as root: the drop happens before
  ``exec`` (Popen's user/group), because ``-runas`` calls setuid after the seccomp filter is in
  place, and ``elevateprivileges=deny`` kills QEMU for it. QEMU then opens no file of its own:
  the host opens the kernel, initrd, base image and overlay and passes descriptors
  (``/proc/self/fd/N`` for the loaders, ``-add-fd`` + ``/dev/fdset/N`` for the disks), and
  creates the QMP and agent sockets and passes their listening descriptors. So QEMU needs no
  access to the data directory (which may sit under a 0700 home), and a compromised QEMU
  cannot write anywhere in it.
- The serial console is QEMU's stdout and its own messages its stderr, both pipes drained into
  size-capped files (adapter.qemu.logcap).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from adapter.qemu.image import QemuImage
from adapter.qemu.initramfs import AGENT_PORT_NAME
from adapter.qemu.logcap import follow_capped
from adapter.qemu.vm import VmDir, VmSpec
from domain.errors import RuntimeUnavailableError

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class QemuUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def resolve_qemu_user(name: str | None) -> tuple[QemuUser | None, str]:
    """The user QEMU runs as (None: the service's own) and why.

    Only root can switch users; an unprivileged service runs QEMU as itself, which is already
    unprivileged. A root service whose configured user is missing refuses to start VMs rather
    than run QEMU as root."""
    if name is None:
        return None, "no QEMU user configured: QEMU runs as the service's user"
    if os.geteuid() != 0:
        return None, "the service is not root: QEMU runs as the service's (unprivileged) user"
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise RuntimeUnavailableError(
            f"QEMU user {name!r} does not exist; create it with `scripts/setup.sh qemu`"
        ) from exc
    if entry.pw_uid == 0:
        raise RuntimeUnavailableError(f"QEMU user {name!r} is root")
    groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid) if g != 0)
    return QemuUser(name, entry.pw_uid, entry.pw_gid, groups), f"QEMU runs as {name}"


def start_qemu(
    spec: VmSpec,
    image: QemuImage,
    vm: VmDir,
    incoming: Path | None,
    user: QemuUser | None,
    log_max_bytes: int,
) -> subprocess.Popen[bytes]:
    """Start QEMU for ``vm`` (restoring ``incoming`` when given); see the module docstring."""
    fds: list[int] = []
    try:
        kernel = _open(fds, image.kernel, os.O_RDONLY)
        initrd = _open(fds, image.initrd, os.O_RDONLY)
        disks = _disk_arguments(fds, [image.base, *spec.layers], vm.overlay, spec.extra_disk)
        agent = _listen(fds, vm.agent_socket)
        qmp = _listen(fds, vm.qmp_socket)
        memory = _open(fds, incoming, os.O_RDONLY) if incoming is not None else None
        command = [
            spec.binary,
            "-name", f"sandboxd-{vm.vm_id}",
            "-sandbox", SANDBOX,
            "-M", f"microvm,accel={spec.accel}",
            # TCG's "max" CPU has RDRAND, which seeds the guest's CRNG at once; KVM keeps the
            # default model because "host" fails on hosts that only take PVM guests.
            *(["-cpu", "max"] if spec.accel == "tcg" else []),
            "-m", str(spec.memory_mb),
            "-smp", str(spec.vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", f"/proc/self/fd/{kernel}",
            "-initrd", f"/proc/self/fd/{initrd}",
            "-append", spec.kernel_cmdline,
            "-chardev", "stdio,id=console,signal=off",
            "-serial", "chardev:console",
            *disks,
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=agent,fd={agent},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
            "-chardev", f"socket,id=qmp,fd={qmp},server=on,wait=off",
            "-mon", "chardev=qmp,mode=control",
            *(["-incoming", f"fd:{memory}"] if memory is not None else []),
        ]  # fmt: skip
        try:
            # A session of its own: QEMU must outlive a killed service (reconciliation finds
            # it) and must not get the terminal's signals.
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=fds,
                start_new_session=True,
                cwd="/",
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=list(user.groups) if user else None,
            )
        except OSError as exc:
            raise RuntimeUnavailableError(f"cannot start {spec.binary}: {exc}") from exc
    finally:
        # QEMU has its copies; the host keeping a listening socket open would let connections
        # to a dead VM hang instead of being refused.
        for fd in fds:
            os.close(fd)
    # Written by us rather than with -pidfile: it exists before QEMU gets to run at all.
    vm.pidfile.write_text(f"{process.pid}\n")
    assert process.stdout is not None and process.stderr is not None
    follow_capped(process.stdout, vm.console_file, log_max_bytes)
    follow_capped(process.stderr, vm.log_file, log_max_bytes)
    return process


def _disk_arguments(
    fds: list[int], layers: list[Path], overlay: Path, extra: Path | None
) -> list[str]:
    """The read-only qcow2 chain (base first), the VM's writable overlay on top, and the extra
    raw disk. Backing files are named explicitly: QEMU never opens a path from a qcow2 header.
    The opaque names the files: the work dir in QEMU's command line is also how VmDir.qemu_pid
    tells our QEMU from a process that reused its pid."""
    args: list[str] = []
    below = ""
    for index, layer in enumerate(layers):
        fd = _open(fds, layer, os.O_RDONLY)
        node = f"layer{index}"
        backing = f",backing={below}" if below else ""
        args += [
            "-add-fd", f"fd={fd},set={index + 10},opaque={layer}",
            "-blockdev",
            f"driver=file,node-name={node}-file,filename=/dev/fdset/{index + 10},read-only=on",
            "-blockdev", f"driver=qcow2,node-name={node},file={node}-file,read-only=on{backing}",
        ]  # fmt: skip
        below = node
    fd = _open(fds, overlay, os.O_RDWR)
    args += [
        "-add-fd", f"fd={fd},set=1,opaque={overlay}",
        "-blockdev", "driver=file,node-name=root-file,filename=/dev/fdset/1,discard=unmap",
        "-blockdev",
        f"driver=qcow2,node-name=root,file=root-file,backing={below},discard=unmap",
        "-device", "virtio-blk-device,drive=root",
    ]  # fmt: skip
    if extra is not None:
        fd = _open(fds, extra, os.O_RDONLY)
        args += [
            "-add-fd", f"fd={fd},set=2,opaque={extra}",
            "-blockdev", "driver=file,node-name=extra-file,filename=/dev/fdset/2,read-only=on",
            "-blockdev", "driver=raw,node-name=extra,file=extra-file,read-only=on",
            "-device", "virtio-blk-device,drive=extra",
        ]  # fmt: skip
    return args


def _open(fds: list[int], path: Path, flags: int) -> int:
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeUnavailableError(f"cannot open {path.name} for QEMU: {exc}") from exc
    fds.append(fd)
    return fd


def _listen(fds: list[int], path: Path) -> int:
    """A listening Unix socket at ``path`` (by the work dir's descriptor: no sun_path limit)."""
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock.bind(f"/proc/self/fd/{directory}/{path.name}")
        sock.listen(16)
        fds.append(sock.detach())
    except OSError as exc:
        sock.close()
        raise RuntimeUnavailableError(f"cannot create {path.name}: {exc}") from exc
    finally:
        os.close(directory)
    return fds[-1]
