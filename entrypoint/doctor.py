"""``sandboxd doctor``: what the service needs on this host, one line per check, each failure with
how to fix it.

Each check is a small function of the settings that returns a Check. A failure is ``fatal`` when
the configured runtime (or the service as a whole) cannot work with it; ``sandboxd doctor`` exits
non-zero when any check is. Things that only matter for the other runtime, or that the service
repairs by itself on start (a missing sandbox image is built, an empty SQLite file migrated), are
warnings at most.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from entrypoint.settings import Settings

# Below this much free disk in the data dir the image build or a VM overlay would fail.
DISK_FAIL_BYTES = 512 * 1024 * 1024
# The root filesystem and its tarball take about 1 GB; warn before a first build runs dry.
DISK_WARN_BYTES = 2 * 1024 * 1024 * 1024
QEMU_BINARY = "qemu-system-x86_64"
# Enough to tell a dead endpoint from a live one without holding the operator up.
PROBE_TIMEOUT_S = 5


class Status(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    fatal: bool = False

    def line(self) -> str:
        text = f"[{self.status.value:<4}] {self.name}: {self.detail}"
        return f"{text} -> fix: {self.fix}" if self.fix else text

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value.lower(),
            "detail": self.detail,
            "fix": self.fix,
            "fatal": self.fatal,
        }


def _failed(name: str, detail: str, fix: str, *, fatal: bool) -> Check:
    return Check(name, Status.FAIL if fatal else Status.WARN, detail, fix, fatal)


# Docker ---------------------------------------------------------------------------------------


def _docker_target(settings: Settings) -> str:
    return (
        settings.docker.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    )


def _docker_client(settings: Settings) -> Any:
    import docker

    return docker.APIClient(
        base_url=settings.docker.base_url or None, version="auto", timeout=PROBE_TIMEOUT_S
    )


def check_docker_engine(settings: Settings) -> Check:
    import docker
    import requests

    needed = settings.runtime == "docker"
    target = _docker_target(settings)
    try:
        version = _docker_client(settings).version()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return _failed(
            "docker",
            f"no Docker engine answers at {target} ({_short(exc)})",
            "start dockerd (scripts/setup.sh docker, or systemctl start docker) or point "
            "SANDBOXD_DOCKER_BASE_URL / DOCKER_HOST at the engine's socket",
            fatal=needed,
        )
    detail = (
        f"engine {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) at {target}"
    )
    return Check("docker", Status.OK, detail + ("" if needed else " (not the configured runtime)"))


def configured_docker_runtime(settings: Settings) -> str:
    """The OCI runtime the Docker sandboxes use (SANDBOXD_DOCKER_RUNTIME; runc when unset)."""
    value = getattr(settings.docker, "runtime", None) or os.environ.get("SANDBOXD_DOCKER_RUNTIME")
    return str(value or "").strip()


def check_gvisor(settings: Settings) -> Check:
    import docker
    import requests

    wanted = configured_docker_runtime(settings)
    if settings.runtime != "docker" or wanted != "runsc":
        return Check(
            "gvisor", Status.SKIP, "not configured (sandboxes use the engine's default runtime)"
        )
    registration = (
        '/etc/docker/daemon.json: {"runtimes": {"runsc": {"path": "/usr/bin/runsc", '
        '"runtimeArgs": ["--platform=ptrace", "--network=none", "--host-uds=create"]}}}, '
        "then reload dockerd (kill -HUP its pid)"
    )
    try:
        runtimes = _docker_client(settings).info().get("Runtimes") or {}
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return _failed(
            "gvisor",
            f"cannot ask the engine for runtimes ({_short(exc)})",
            "see docker",
            fatal=True,
        )
    if "runsc" in runtimes:
        path = runtimes["runsc"].get("path", "runsc")
        return Check("gvisor", Status.OK, f"runsc is registered with dockerd ({path})")
    install = "" if shutil.which("runsc") else "apt-get install runsc; "
    return _failed(
        "gvisor",
        f"SANDBOXD_DOCKER_RUNTIME=runsc but dockerd knows only {', '.join(sorted(runtimes))}",
        install + "register it in " + registration,
        fatal=True,
    )


# QEMU and KVM ---------------------------------------------------------------------------------


def check_qemu(settings: Settings) -> Check:
    from adapter.qemu.accel import qemu_version

    needed = settings.runtime == "qemu"
    binary = shutil.which(QEMU_BINARY)
    if binary is None:
        return _failed(
            "qemu",
            f"{QEMU_BINARY} is not installed",
            "scripts/setup.sh qemu (qemu-system-x86 qemu-utils busybox-static e2fsprogs)",
            fatal=needed,
        )
    version = qemu_version(binary) or "unknown version"
    missing = [tool for tool in ("qemu-img", "mkfs.ext4") if shutil.which(tool) is None]
    if missing:
        return _failed(
            "qemu",
            f"{version}; missing {', '.join(missing)}",
            "scripts/setup.sh qemu",
            fatal=needed,
        )
    return Check("qemu", Status.OK, version + ("" if needed else " (not the configured runtime)"))


def check_kvm(settings: Settings) -> Check:
    """KVM usable, present but unusable (e.g. a PVM-only host), or absent: then TCG.

    The verdict is the runtime's own (adapter.qemu.accel.choose_accelerator: a probe boot of the
    guest kernel, cached per host boot), so doctor and the service never disagree.
    """
    from adapter.qemu.accel import choose_accelerator
    from adapter.qemu.image import load_qemu_image, qemu_dir

    requested = settings.qemu.accel
    binary = shutil.which(QEMU_BINARY)
    if requested in ("kvm", "tcg"):
        return Check("kvm", Status.OK, f"SANDBOXD_QEMU_ACCEL={requested} (forced, not probed)")
    if not os.path.exists("/dev/kvm"):
        return Check("kvm", Status.OK, "no /dev/kvm: microVMs run under TCG (slower, works)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Check(
            "kvm",
            Status.WARN,
            "/dev/kvm is not accessible to this user: TCG",
            "add the service user to the kvm group",
        )
    image_dir = settings.qemu.image_dir or settings.data_dir
    image = load_qemu_image(image_dir)
    if binary is None or image is None:
        return Check(
            "kvm",
            Status.OK,
            "/dev/kvm is accessible; whether a stock kernel boots on it is probed on first start "
            "(no microVM image yet: sandboxd image build --runtime qemu)",
        )
    choice = choose_accelerator(
        requested, binary, image.kernel, image.kernel_hash, qemu_dir(image_dir) / "accel.json"
    )
    if choice.accel == "kvm":
        return Check("kvm", Status.OK, f"KVM is usable ({choice.reason})")
    return Check(
        "kvm",
        Status.OK,
        "/dev/kvm is there but a stock kernel does not boot on it (PVM-only?): "
        f"TCG ({choice.reason})",
    )


# Images ---------------------------------------------------------------------------------------


def check_images(settings: Settings) -> Check:
    has_debootstrap = shutil.which("debootstrap") is not None
    build = "sandboxd image build" + (" --runtime qemu" if settings.runtime == "qemu" else "")

    def missing(what: str) -> Check:
        if settings.runtime == "docker" and settings.docker.image:
            return _failed(
                "images",
                f"{what} (SANDBOXD_DOCKER_IMAGE names it; the service does not build it)",
                f"docker load or docker import {settings.docker.image}, or unset "
                "SANDBOXD_DOCKER_IMAGE to use the built-in image",
                fatal=True,
            )
        if has_debootstrap:
            return Check(
                "images",
                Status.WARN,
                f"{what}; the service builds it on first start (about a minute)",
                f"{build} now, so that the first start is quick",
            )
        return _failed(
            "images",
            f"{what} and debootstrap is not installed to build it",
            f"scripts/setup.sh image-tools, then {build}",
            fatal=True,
        )

    if settings.runtime == "qemu":
        from adapter.qemu.image import load_qemu_image

        image_dir = settings.qemu.image_dir or settings.data_dir
        image = load_qemu_image(image_dir)
        if image is None:
            return missing(f"no microVM image under {image_dir}/qemu")
        return Check("images", Status.OK, f"microVM image: kernel, initramfs and {image.base}")

    import docker
    import requests

    from adapter.docker.image import default_image_tag

    tag = settings.docker.image or default_image_tag(settings.docker.image_repository)
    try:
        _docker_client(settings).inspect_image(tag)
    except docker.errors.ImageNotFound:
        return missing(f"sandbox image {tag} is not in the engine")
    except (docker.errors.DockerException, requests.RequestException, OSError):
        return Check("images", Status.SKIP, f"cannot look for {tag}: no Docker engine (see docker)")
    return Check("images", Status.OK, f"sandbox image {tag} is present")


# Database -------------------------------------------------------------------------------------


def check_database(settings: Settings) -> Check:
    from domain.errors import RepositoryUnavailableError
    from entrypoint.persistence import auto_migrate, database_engine
    from repository.database import current_revision, head_revision, mask_url

    url = settings.effective_database_url
    try:
        engine = database_engine(settings)
    except Exception as exc:  # a malformed URL raises from SQLAlchemy's parser, not ours
        return _failed(
            "database",
            f"{mask_url(url)}: {_short(exc)}",
            "SANDBOXD_DATABASE_URL=postgresql+psycopg://USER:PASSWORD@HOST:5432/DB or sqlite:///FILE",
            fatal=True,
        )
    target = mask_url(engine.url)
    try:
        current = current_revision(engine)
    except RepositoryUnavailableError as exc:
        return _failed(
            "database",
            f"cannot reach {target}: {_short(exc)}",
            "start the database (scripts/setup.sh postgres) or correct SANDBOXD_DATABASE_URL",
            fatal=True,
        )
    finally:
        engine.dispose()
    head = head_revision()
    if current == head:
        return Check("database", Status.OK, f"{target} at migration {head} (head)")
    state = "has no sandboxd schema" if current is None else f"is at migration {current}"
    if auto_migrate(settings):
        return Check(
            "database", Status.OK, f"{target} {state}; it migrates itself to {head} on start"
        )
    return _failed(
        "database",
        f"{target} {state}, head is {head}; the service refuses to serve on it",
        "sandboxd migrate (once, from one host)",
        fatal=True,
    )


# Disk, memory ---------------------------------------------------------------------------------


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def check_disk(settings: Settings) -> Check:
    where = _existing_parent(settings.data_dir)
    free = shutil.disk_usage(where).free
    detail = f"{_mib(free)} free in {settings.data_dir}" + (
        "" if where == settings.data_dir else f" (on {where}; the directory is created on start)"
    )
    if not os.access(where, os.W_OK):
        return _failed(
            "disk",
            f"{where} is not writable by this user",
            "chown the data dir to the service user or set SANDBOXD_DATA_DIR",
            fatal=True,
        )
    if free < DISK_FAIL_BYTES:
        return _failed(
            "disk", detail, "free space or move SANDBOXD_DATA_DIR to a larger disk", fatal=True
        )
    if free < DISK_WARN_BYTES:
        return Check(
            "disk", Status.WARN, detail + "; an image build needs about 1 GiB", "free space"
        )
    return Check("disk", Status.OK, detail)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(settings: Settings, available: int | None = None) -> Check:
    available = _meminfo_available() if available is None else available
    per_sandbox_mb = (
        settings.qemu.memory_mb if settings.runtime == "qemu" else settings.docker.memory_mb
    )
    setting = (
        "SANDBOXD_QEMU_MEMORY_MB" if settings.runtime == "qemu" else "SANDBOXD_DOCKER_MEMORY_MB"
    )
    if available is None:
        return Check("memory", Status.SKIP, "cannot read MemAvailable from /proc/meminfo")
    fits = available // (per_sandbox_mb * 1024 * 1024)
    detail = (
        f"{_mib(available)} available: room for {fits} sandboxes at {setting}={per_sandbox_mb} "
        "at their limit (most use far less)"
    )
    if fits < 1:
        return _failed("memory", detail, f"free memory or lower {setting}", fatal=True)
    if fits < 4:
        return Check("memory", Status.WARN, detail, f"free memory or lower {setting}")
    return Check("memory", Status.OK, detail)


# S3 -------------------------------------------------------------------------------------------


def configured_s3_endpoint(settings: Settings) -> str:
    """The S3 endpoint of the snapshot store, when one is configured (SANDBOXD_S3_*)."""
    group = getattr(settings, "s3", None)
    for name in ("endpoint_url", "endpoint"):
        value = getattr(group, name, None) if group is not None else None
        if value:
            return str(value)
    bucket = (getattr(group, "bucket", None) if group is not None else None) or os.environ.get(
        "SANDBOXD_S3_BUCKET"
    )
    endpoint = os.environ.get("SANDBOXD_S3_ENDPOINT_URL") or os.environ.get("SANDBOXD_S3_ENDPOINT")
    if endpoint:
        return endpoint
    # A bucket without an endpoint means AWS's regional endpoint.
    region = os.environ.get("SANDBOXD_S3_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return f"https://s3.{region}.amazonaws.com" if bucket else ""


def check_s3(settings: Settings) -> Check:
    import httpx

    endpoint = configured_s3_endpoint(settings)
    if not endpoint:
        return Check("s3", Status.SKIP, "not configured (no SANDBOXD_S3_* settings)")
    try:
        response = httpx.get(endpoint, timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return _failed(
            "s3",
            f"{endpoint} does not answer ({_short(exc)})",
            "check the endpoint URL and the network path to it",
            fatal=False,
        )
    # Any HTTP answer (403 without credentials is usual) proves the endpoint is reachable.
    return Check("s3", Status.OK, f"{endpoint} answers (HTTP {response.status_code})")


# Running them ---------------------------------------------------------------------------------

CHECKS: tuple[Callable[[Settings], Check], ...] = (
    check_docker_engine,
    check_gvisor,
    check_qemu,
    check_kvm,
    check_images,
    check_database,
    check_disk,
    check_memory,
    check_s3,
)


def run_checks(settings: Settings) -> list[Check]:
    results = []
    for check in CHECKS:
        try:
            results.append(check(settings))
        except Exception as exc:  # a check must not hide the others
            name = check.__name__.removeprefix("check_")
            results.append(
                Check(name, Status.FAIL, f"the check itself failed: {_short(exc)}", fatal=True)
            )
    return results


def exit_status(results: list[Check]) -> int:
    return 1 if any(result.fatal for result in results) else 0


def _mib(value: int) -> str:
    return f"{value / 1024 / 1024:,.0f} MiB"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
