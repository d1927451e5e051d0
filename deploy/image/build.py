"""Build the service's own container image offline: ``uv run python deploy/image/build.py``.

Like the sandbox image, no registry is involved:
1. base: ``debootstrap --variant=minbase bookworm`` with python3 (and debootstrap, so that the
   service can build the sandbox image itself) from the machine's Debian mirror, then
   ``docker import`` as ``sandboxd-service-base:<hash12>`` (skipped when that tag exists; the hash
   covers suite, mirror and package list);
2. wheels: the locked runtime dependencies (``uv export`` from uv.lock, checked against its
   hashes by ``pip download``) and the service's own wheel (``uv build``), from PyPI on the host;
3. ``docker build --network none`` of deploy/image/Dockerfile FROM the base: a venv in
   /opt/sandboxd with those wheels, ``sandboxd serve`` as the command.
Tags ``sandboxd-service:<hash12>`` (over the base tag, the wheels' contents and the Dockerfile) and
``sandboxd-service:latest``; prints the first. Needs root (debootstrap) and a Docker engine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.errors import ImageNotFound

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from adapter.image.rootfs import configured_mirror  # noqa: E402
from entrypoint.settings import Settings  # noqa: E402

BUILDER_VERSION = "1"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates", "debootstrap", "wget")
REPOSITORY = "sandboxd-service"
BASE_REPOSITORY = "sandboxd-service-base"
DOCKERFILE = Path(__file__).resolve().parent / "Dockerfile"
_EXPORT = ("uv", "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header", "--quiet")
# Wheels only, for the interpreter running this script: the project's Python (3.11) on this
# host, which is what bookworm in the image has (CPython 3.11, glibc 2.36, x86-64).
PIP_PLATFORM = ("--only-binary=:all:",)


def log(message: str) -> None:
    print(f"[deploy-image] {message}", file=sys.stderr, flush=True)


def run(*command: str, cwd: Path = ROOT, quiet: bool = False) -> None:
    """Run a command; ``quiet`` keeps its output unless it fails (then its tail is shown)."""
    if not quiet:
        subprocess.run(command, cwd=cwd, check=True)
        return
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-20:]
        raise SystemExit(f"{command[0]} exited with {done.returncode}:\n" + "\n".join(tail))


@dataclass(frozen=True)
class Rootfs:
    """What a debootstrap image holds: its packages, files written into the tree after
    debootstrap (path -> (mode, content)), trees pruned from it and its ``docker import``
    changes. The service's base is the default; deploy/image/postgres.py makes another."""

    repository: str = BASE_REPOSITORY
    packages: tuple[str, ...] = PACKAGES
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    pruned: tuple[str, ...] = ()
    changes: tuple[str, ...] = ("ENV LANG=C.UTF-8",)

    def tag(self, mirror: str) -> str:
        fields: dict[str, object] = {
            "builder": BUILDER_VERSION,
            "suite": SUITE,
            "mirror": mirror,
            "packages": self.packages,
        }
        # Only images that have them hash these, so the service base keeps its tag.
        if self.files or self.pruned or self.changes != Rootfs.changes:
            fields.update(files=self.files, pruned=self.pruned, changes=self.changes)
        key = json.dumps(fields, sort_keys=True)
        return f"{self.repository}:{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def build_base(
    client: docker.DockerClient, mirror: str, work: Path, rootfs: Rootfs = Rootfs()
) -> str:
    tag = rootfs.tag(mirror)
    if exists(client, tag):
        log(f"base {tag} is up to date")
        return tag
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is missing: scripts/setup.sh image-tools")
    tree = work / "rootfs"
    log(f"debootstrap {SUITE} from {mirror} with {', '.join(rootfs.packages)} (about a minute)")
    run(
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(rootfs.packages)}",
        SUITE,
        str(tree),
        mirror,
        quiet=True,
    )
    for pruned in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt"):
        shutil.rmtree(tree / pruned, ignore_errors=True)
    for pruned in rootfs.pruned:
        shutil.rmtree(tree / pruned, ignore_errors=True)
    for name, (mode, content) in rootfs.files.items():
        path = tree / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(mode)
    tarball = work / "rootfs.tar"
    run("tar", "--numeric-owner", "-C", str(tree), "-cf", str(tarball), ".")
    log(f"docker import as {tag}")
    repository, version = tag.split(":")
    with tarball.open("rb") as data:
        client.api.import_image_from_data(
            data.read(), repository=repository, tag=version, changes=list(rootfs.changes)
        )
    shutil.rmtree(tree, ignore_errors=True)
    tarball.unlink()
    return tag


def dependency_wheels(scratch: Path) -> Path:
    """The locked runtime dependencies as wheels, cached per uv.lock content under
    ``<data_dir>/images/service-wheels-<hash12>`` (downloaded once from PyPI)."""
    hashed = scratch / "requirements-hashed.txt"
    run(*_EXPORT, "--format", "requirements-txt", "-o", str(hashed))
    key = hashlib.sha256((hashed.read_text() + "".join(PIP_PLATFORM)).encode()).hexdigest()
    cache = Settings().data_dir / "images" / f"service-wheels-{key[:12]}"
    if (cache / ".complete").exists():
        log(f"dependency wheels {cache.name} are up to date")
        return cache
    partial = cache.with_name(cache.name + f".{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log("pip download of the locked dependencies (hashes checked against uv.lock)")
    run(
        "uv", "run", "--no-project", "--quiet", "--python", sys.executable, "--with", "pip",
        "python", "-m", "pip",
        "download", "--quiet", "--disable-pip-version-check", "--require-hashes", "--no-deps",
        *PIP_PLATFORM, "-r", str(hashed), "-d", str(partial),
    )  # fmt: skip
    (partial / ".complete").write_text("")
    shutil.rmtree(cache, ignore_errors=True)
    partial.rename(cache)
    # Wheel sets of older locks, once they are an hour old (a concurrent build may use one).
    for stale in cache.parent.glob("service-wheels-*"):
        if stale != cache and time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    return cache


def build_wheels(context: Path, scratch: Path) -> dict[str, str]:
    """Fill ``context/wheels``; returns file name -> sha256 (hatchling builds reproducible
    wheels, so an unchanged source gives the same digest and the image is not rebuilt)."""
    wheels = context / "wheels"
    shutil.copytree(dependency_wheels(scratch), wheels, ignore=shutil.ignore_patterns(".*"))
    requirements = wheels / "requirements.txt"
    run(*_EXPORT, "--no-hashes", "--format", "requirements-txt", "-o", str(requirements))
    log("uv build of the service's wheel")
    run("uv", "build", "--wheel", "--quiet", "--out-dir", str(wheels))
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(wheels.iterdir())
    }


def build(client: docker.DockerClient, tag_latest: bool = True) -> str:
    with tempfile.TemporaryDirectory(prefix="sandboxd-service-image-") as scratch:
        work = Path(scratch)
        base = build_base(client, configured_mirror(), work)
        context = work / "context"
        context.mkdir()
        wheels = build_wheels(context, work)
        shutil.copyfile(DOCKERFILE, context / "Dockerfile")
        digest = hashlib.sha256(
            json.dumps(
                {"base": base, "wheels": wheels, "dockerfile": DOCKERFILE.read_text()}
            ).encode()
        ).hexdigest()
        tag = f"{REPOSITORY}:{digest[:12]}"
        if exists(client, tag):
            log(f"{tag} is up to date")
        else:
            log(f"docker build {tag} FROM {base} (network none)")
            client.images.build(
                path=str(context),
                tag=tag,
                buildargs={"BASE": base},
                network_mode="none",
                rm=True,
                forcerm=True,
                labels={"sandboxd.service_image": digest},
            )
        if tag_latest:
            client.images.get(tag).tag(REPOSITORY, "latest")
    prune_old_tags(client, keep=tag)
    return tag


def prune_old_tags(client: docker.DockerClient, keep: str, min_age_s: float = 3600) -> None:
    """Drop older builds (an hour old or more, so not a concurrent build's) except :latest;
    the engine refuses, and we skip, those a container still uses."""
    for image in client.api.images(name=REPOSITORY):
        if time.time() - float(image.get("Created") or time.time()) < min_age_s:
            continue
        for old in image.get("RepoTags") or []:
            if old not in (keep, f"{REPOSITORY}:latest"):
                try:
                    client.api.remove_image(old)
                    log(f"removed old image {old}")
                except docker.errors.APIError:
                    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-latest", action="store_true", help="do not move the latest tag")
    args = parser.parse_args()
    client = docker.from_env(timeout=900)
    print(build(client, tag_latest=not args.no_latest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
