"""The sandbox root filesystem, built offline from Debian packages; runtime-neutral.

Docker imports its tarball (``adapter.docker.image``); the QEMU image builder packs its directory
into ext4/qcow2. Both get it from :func:`build_rootfs`.

Two cached layers under ``<data_dir>/images``:
- ``base-<hash12>``: the debootstrap tree, keyed by suite, mirror and package list only, so that
  changing the agent does not cost another debootstrap;
- ``rootfs-<hash12>``: base + the ``sandbox`` user + the guest agent + /workspace, and its tarball.
Each is built in a temporary directory and renamed into place when complete, under a file lock,
so concurrent builders (another engineer's runtime, a second CLI) wait instead of racing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

# Bump when the build steps change in a way that changes the tree: BUILDER_VERSION for the
# debootstrap layer, FINISH_VERSION for the steps on top of it (slimming, font cache, user,
# setuid stripping): bumping that rebuilds the rootfs layer only, not the (slow) debootstrap.
BUILDER_VERSION = "3"
FINISH_VERSION = "3"
# Build-time only: Debian's python3-scipy pulls python3-pythran, which pulls the C/C++ compiler,
# binutils, libc and Python headers and Boost (~500 MB). No sandbox compiles anything (packages
# come as wheels), so they are purged from the tree; scipy, numpy and pip keep working.
TOOLCHAIN_PACKAGES: tuple[str, ...] = (
    "binutils", "binutils-common", "binutils-x86-64-linux-gnu", "cpp", "cpp-12", "g++", "g++-12",
    "gcc", "gcc-12", "libasan8", "libbinutils", "libboost-dev", "libboost1.74-dev",
    "libc-dev-bin", "libc6-dev", "libcc1-0", "libcrypt-dev", "libctf-nobfd0", "libctf0",
    "libexpat1-dev", "libgcc-12-dev", "libgprofng0", "libisl23", "libitm1", "libjansson4",
    "liblsan0", "libmpc3", "libnsl-dev", "libopenblas-dev", "libopenblas-pthread-dev",
    "libpython3-all-dev", "libpython3-dev", "libpython3.11-dev", "libstdc++-12-dev",
    "libtirpc-dev", "libtsan2", "libubsan1", "libxsimd-dev", "linux-libc-dev",
    "python3-all-dev", "python3-beniget", "python3-dev", "python3-gast", "python3-pythran",
    "python3.11-dev", "rpcsvc-proto", "zlib1g-dev",
)  # fmt: skip
# matplotlib's font cache, built into the image (read-only); the agent copies it into the
# interpreters' MPLCONFIGDIR outside /workspace (see sandbox_agent._cache_dirs).
MATPLOTLIB_TEMPLATE = "opt/sandboxd/matplotlib"
SUITE = "bookworm"
# The default environment serves chat as-is: data analysis and plots work with no settings, and
# pip is there for offline installs of environments (adapter.environment) on top of this image.
PACKAGES: tuple[str, ...] = (
    "python3",
    "nodejs",
    "python3-numpy",
    "python3-pandas",
    "python3-matplotlib",
    "python3-scipy",
    "python3-pil",
    "python3-pip",
)
# Sandboxes have no display: plots render to files (savefig) with the Agg backend, whatever
# GUI toolkit a later install drags in.
MATPLOTLIBRC = "etc/matplotlibrc"
SANDBOX_USER = "sandbox"
SANDBOX_UID = 1000
AGENT_GUEST_PATH = "/opt/sandboxd/agent.py"
AGENT_SOURCE = Path(__file__).resolve().parent.parent / "agent" / "guest" / "sandbox_agent.py"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Left out of the tree: documentation, manuals, translations and apt's caches; nobody reads them
# in a sandbox and they double the image.
_PRUNED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
)

Progress = Callable[[str], None]


class RootfsBuildError(RuntimeError):
    """debootstrap or a later step failed; nothing half-built is left in the cache."""


@dataclass(frozen=True)
class RootfsArtifact:
    """A finished root filesystem: ``path`` is the directory, ``tarball`` the same tree as tar."""

    path: Path
    tarball: Path
    content_hash: str

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_hash(mirror: str, packages: tuple[str, ...] = PACKAGES) -> str:
    return _sha256(
        json.dumps(
            {"builder": BUILDER_VERSION, "suite": SUITE, "mirror": mirror, "packages": packages},
            sort_keys=True,
        ).encode()
    )


def rootfs_hash(mirror: str | None = None, packages: tuple[str, ...] = PACKAGES) -> str:
    """Hash of every input of the tree; cheap (reads the agent file, builds nothing)."""
    agent = _sha256(AGENT_SOURCE.read_bytes())
    return _sha256(
        json.dumps(
            {
                "base": base_hash(mirror or configured_mirror(), packages),
                "finish": FINISH_VERSION,
                "agent": agent,
                "user": [SANDBOX_USER, SANDBOX_UID],
            },
            sort_keys=True,
        ).encode()
    )


def configured_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror of this machine's apt sources (deb822 or one-line), for bookworm main."""
    candidates: list[str] = []
    for source in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in source.read_text().split("\n\n"):
            fields = dict(
                line.split(":", 1) for line in stanza.splitlines() if re.match(r"^\w[\w-]*:", line)
            )
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "main" in fields.get("Components", "").split():
                candidates.extend(fields.get("URIs", "").split())
    for source in [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]:
        if not source.exists():
            continue
        for line in source.read_text().splitlines():
            match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)$", line.strip())
            if match and match.group(2) == SUITE and "main" in match.group(3).split():
                candidates.append(match.group(1))
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def _run_streaming(command: list[str], progress: Progress) -> None:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert process.stdout is not None
    tail: list[str] = []
    for raw in process.stdout:
        line = raw.rstrip()
        if line:
            tail = [*tail[-19:], line]
            progress(line)
    if process.wait() != 0:
        raise RootfsBuildError(
            f"{command[0]} exited with {process.returncode}: " + " | ".join(tail[-5:])
        )


def _build_base(
    directory: Path, mirror: str, packages: tuple[str, ...], progress: Progress
) -> None:
    if shutil.which("debootstrap") is None:
        raise RootfsBuildError("debootstrap is not installed (scripts/setup.sh image-tools)")
    progress(f"debootstrap --variant=minbase {SUITE} from {mirror} with {', '.join(packages)}")
    _run_streaming(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            SUITE,
            str(directory),
            mirror,
        ],
        progress,
    )
    for relative in _PRUNED:
        target = directory / relative
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir(parents=True)


def _add_user(root: Path) -> None:
    # Written directly rather than with useradd in a chroot: no chroot, no /proc needed.
    passwd = root / "etc/passwd"
    if f"\n{SANDBOX_USER}:" not in "\n" + passwd.read_text():
        with passwd.open("a") as f:
            f.write(f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}::/workspace:/bin/bash\n")
        with (root / "etc/group").open("a") as f:
            f.write(f"{SANDBOX_USER}:x:{SANDBOX_UID}:\n")
        with (root / "etc/shadow").open("a") as f:
            f.write(f"{SANDBOX_USER}:!:19000::::::\n")


def _finish(root: Path) -> None:
    _add_user(root)
    agent = root / AGENT_GUEST_PATH.lstrip("/")
    agent.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(AGENT_SOURCE, agent)
    agent.chmod(0o755)
    for mount_point, mode in (("workspace", 0o755), ("run/sandboxd", 0o755)):
        path = root / mount_point
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    os.chown(root / "workspace", SANDBOX_UID, SANDBOX_UID)
    (root / "etc/hostname").write_text("sandbox\n")
    _default_to_agg(root)
    _strip_setid_bits(root)


def _default_to_agg(root: Path) -> None:
    # Debian's matplotlib reads /etc/matplotlibrc as its full defaults file: edit the backend
    # line only, and leave a tree without matplotlib alone.
    rc = root / MATPLOTLIBRC
    if not rc.is_file():
        return
    lines = rc.read_text().splitlines()
    kept = [line for line in lines if not re.match(r"^\s*#?\s*backend\s*:", line)]
    rc.write_text("\n".join([*kept, "backend: Agg"]) + "\n")


def _strip_setid_bits(root: Path) -> None:
    """No setuid/setgid program in the sandbox: nothing there may run with more than its caller.

    debootstrap brings some (su, mount, passwd, ...). Directories keep their setgid bit: it only
    makes new files inherit the group.
    """
    setid = stat.S_ISUID | stat.S_ISGID
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) and mode & setid:
                os.chmod(path, stat.S_IMODE(mode) & ~setid)


def _checked(command: list[str], what: str) -> str:
    """Run a build step; its output, or RootfsBuildError with the tail of its error output."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RootfsBuildError(f"{what} failed: {result.stderr.strip()[-500:]}")
    return result.stdout


def _installed(root: Path) -> set[str]:
    admin_dir = f"--admindir={root / 'var/lib/dpkg'}"
    return set(_checked(["dpkg-query", admin_dir, "-W", "-f=${Package}\n"], "dpkg-query").split())


def _purge_toolchain(root: Path) -> None:
    """Purge TOOLCHAIN_PACKAGES (dependencies ignored: python3-scipy still names pythran), then
    check that what a sandbox uses still imports."""
    present = sorted(set(TOOLCHAIN_PACKAGES) & _installed(root))
    if present:
        _checked(
            ["dpkg", f"--root={root}", "--force-depends", "--force-remove-essential",
             "--purge", *present],
            "dpkg --purge",
        )  # fmt: skip
    _in_root(root, ["python3", "-c", "import numpy, pandas, scipy.linalg, scipy.stats, pip"])


def _build_font_cache(root: Path) -> None:
    if not (root / "usr/lib/python3/dist-packages/matplotlib").is_dir():
        return
    cache = root / MATPLOTLIB_TEMPLATE
    cache.mkdir(parents=True, exist_ok=True)
    _in_root(root, ["env", f"MPLCONFIGDIR=/{MATPLOTLIB_TEMPLATE}", "python3", "-c",
                    "import matplotlib.font_manager"])  # fmt: skip
    if not list(cache.glob("fontlist-*.json")):
        raise RootfsBuildError("matplotlib wrote no font cache")
    for entry in cache.iterdir():
        entry.chmod(0o444)


def _in_root(root: Path, command: list[str]) -> None:
    # Debian's own packages in the tree being built (the host's registries never reach here).
    _checked(["chroot", str(root), *command], f"{command[-1]!r} in the tree")


def _write_tarball(root: Path, tarball: Path) -> None:
    # tar(1) keeps owners, modes, device nodes and hard links exactly as debootstrap made them.
    _checked(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], "tar")
    with tarfile.open(tarball) as check:  # fail here, not in docker import, on a broken tarball
        check.next()


def _cached(final: Path, build: Callable[[Path], None], progress: Progress) -> Path:
    """Build into ``final`` unless it is complete already; atomic by rename."""
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / ".complete").exists():
            return final
        work = final.with_name(final.name + ".building")
        for stale in (work, final):
            if stale.exists():
                shutil.rmtree(stale)
        work.mkdir()
        try:
            build(work)
            (work / ".complete").write_text("")
            work.rename(final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    progress(f"built {final}")
    return final


def build_rootfs(
    data_dir: Path,
    progress: Progress = lambda _message: None,
    mirror: str | None = None,
    packages: tuple[str, ...] = PACKAGES,
) -> RootfsArtifact:
    """Build (or reuse) the sandbox root filesystem; needs root for debootstrap.

    The result lives at ``<data_dir>/images/rootfs-<hash12>/rootfs`` (directory) and
    ``.../rootfs.tar``; it is skipped entirely when the inputs did not change.
    """
    mirror = (mirror or configured_mirror()).rstrip("/")
    images = data_dir / "images"
    content_hash = rootfs_hash(mirror, packages)
    final = images / f"rootfs-{content_hash[:12]}"
    if (final / ".complete").exists():
        progress(f"root filesystem {content_hash[:12]} is up to date")
        return _artifact(final, content_hash)

    base = _cached(
        images / f"base-{base_hash(mirror, packages)[:12]}",
        lambda work: _build_base(work / "rootfs", mirror, packages, progress),
        progress,
    )

    def build(work: Path) -> None:
        progress("copying the base tree")
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(base / "rootfs"), str(work / "rootfs")], check=True
        )
        progress("purging the compiler toolchain and headers")
        _purge_toolchain(work / "rootfs")
        progress("adding the sandbox user, the agent and /workspace")
        _finish(work / "rootfs")
        progress("building matplotlib's font cache")
        _build_font_cache(work / "rootfs")
        progress("writing rootfs.tar")
        _write_tarball(work / "rootfs", work / "rootfs.tar")
        (work / "content_hash").write_text(content_hash + "\n")

    _cached(final, build, progress)
    _prune_old_trees(images, keep=final)
    return _artifact(final, content_hash)


# Trees of other inputs younger than this stay: a concurrent builder (another checkout's test
# session, the QEMU image builder) may be reading one right now.
PRUNE_AFTER_S = 3600.0


def _prune_old_trees(images: Path, keep: Path, keep_previous: int = 1) -> None:
    """Drop finished trees of older inputs (about 400 MB each), keeping the newest few."""
    older = sorted(
        (p for p in images.glob("rootfs-*") if p.is_dir() and p != keep and p.suffix == ""),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    now = time.time()
    for stale in older[keep_previous:]:
        if now - stale.stat().st_mtime > PRUNE_AFTER_S:
            shutil.rmtree(stale, ignore_errors=True)


def _artifact(final: Path, content_hash: str) -> RootfsArtifact:
    return RootfsArtifact(
        path=final / "rootfs", tarball=final / "rootfs.tar", content_hash=content_hash
    )
