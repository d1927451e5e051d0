"""Benchmark of environments; prints one JSON object.

- the default image: size of the root filesystem tree, its tarball, the Docker image and the QEMU
  base qcow2 (when built), and the time to build them (``--cold`` builds the root filesystem from
  scratch in a temporary data dir, about 5 minutes, instead of reporting the cached one);
- a new chat's first ``import pandas, matplotlib`` plus a saved PNG in a Docker sandbox of the
  default image (cold: first import in a fresh container);
- an environment build (L2, Docker) for a small package: cold (download + offline install +
  commit) and warm (found by key), and the size of its own layer;
- an L3 round trip (S3 via moto on loopback, zstd) of the environment's image tarball: upload,
  download, compressed vs raw size.
- package environments (``--packages``, three by default): a new chat's first result (create +
  ``print(1)``) from the cached environment vs from the base image (target <= 1.2x); the cold
  build (host download + offline install + commit) vs ``pip install`` of the same set in a fresh
  container with network (the usual way); an L3 hit (download + zstd decompress + load the
  environment's own layer, a second store with its own data dir and repository) vs the cold build
  (target <= 0.5x).

- ``--runtime qemu`` (or ``all``): the same package-environment figures on QEMU microVMs
  (bench.environment_qemu): first result from the cached environment's disk and snapshot vs the
  base (target <= 1.2x), and the L3 hit (download + zstd decompress + re-point at the local base
  + qemu-img check) vs the cold build in a build VM (target <= 0.5x).

    uv run python -m bench.bench_environment [--cold] [--package tabulate==0.9.0]
        [--packages "tabulate==0.9.0 tomli-w==1.0.0 humanize==4.9.0"] [--only-packages]
        [--runtime docker|qemu|all] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import docker

from adapter.clock import SystemClock
from adapter.docker.image import ensure_docker_image
from adapter.docker.runtime import DockerSandboxConfig, DockerSandboxRuntime
from adapter.environment.docker_images import DockerEnvironmentConfig
from adapter.environment.docker_store import DockerEnvironmentStore
from adapter.image.rootfs import build_rootfs
from adapter.logging import ServiceLogger, configure_logging
from adapter.qemu.image import load_qemu_image
from adapter.s3.artifact_store import S3ArtifactConfig, S3ArtifactStore
from bench.common import emit
from domain.environment import ArtifactKind, Environment
from domain.execution import ExecutionRequest, Language
from entrypoint.settings import Settings
from testkit.runtime import remove_instance_containers
from usecase.ports import Logger

# Fixed times: the runtime only records them.
CREATED_AT = datetime(2030, 1, 1, tzinfo=UTC)
EXPIRES_AT = CREATED_AT + timedelta(minutes=15)
# moto accepts any credentials; boto insists on having some.
MOTO_CREDENTIALS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}

PLOT = (
    "import pandas as pd, matplotlib.pyplot as plt\n"
    "frame = pd.DataFrame({'x': range(50), 'y': [v * v for v in range(50)]})\n"
    "frame.plot(x='x', y='y'); plt.savefig('/workspace/plot.png')\n"
    "print('ok')\n"
)


def mb(size: float) -> float:
    return round(size / 1e6, 1)


def tree_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def default_image(client: docker.APIClient, data_dir: Path, cold: bool) -> dict:
    report: dict = {}
    if cold:
        scratch = Path(tempfile.mkdtemp(prefix="sbx-bench-env-"))
        try:
            started = time.monotonic()
            artifact = build_rootfs(scratch)
            report["rootfs_cold_build_s"] = round(time.monotonic() - started, 1)
            report["rootfs_tree_mb"] = mb(tree_bytes(artifact.path))
            report["rootfs_tar_mb"] = mb(artifact.tarball.stat().st_size)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    started = time.monotonic()
    tag = ensure_docker_image(client, data_dir)
    report["docker_image_ensure_s"] = round(time.monotonic() - started, 2)
    artifact = build_rootfs(data_dir)
    report.setdefault("rootfs_tree_mb", mb(tree_bytes(artifact.path)))
    report.setdefault("rootfs_tar_mb", mb(artifact.tarball.stat().st_size))
    report["docker_image"] = tag
    report["docker_image_mb"] = mb(client.inspect_image(tag)["Size"])
    qemu = load_qemu_image(data_dir)
    if qemu is not None and qemu.rootfs_hash == artifact.content_hash:
        report["qemu_base_qcow2_mb"] = mb(qemu.base.stat().st_size)
    return report


@contextmanager
def moto_bucket(bucket: str, logger: Logger) -> Iterator[tuple[str, S3ArtifactStore]]:
    """A real S3 endpoint on loopback (moto's server) with one bucket, and a store on it."""
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **MOTO_CREDENTIALS)
    s3.create_bucket(Bucket=bucket)
    store = S3ArtifactStore(
        S3ArtifactConfig(
            bucket=bucket,
            endpoint_url=endpoint,
            access_key_id=MOTO_CREDENTIALS["aws_access_key_id"],
            secret_access_key=MOTO_CREDENTIALS["aws_secret_access_key"],
        ),
        logger,
    )
    try:
        yield endpoint, store
    finally:
        store.close()
        server.stop()


def remove_repository(client: docker.APIClient, repository: str) -> None:
    for image in client.images(name=repository):
        for tag in image.get("RepoTags") or []:
            client.remove_image(tag, force=True)


def first_plot(client: docker.APIClient, image: str) -> dict:
    instance_id = f"bench-{uuid4().hex[:12]}"
    data_dir = Path(tempfile.mkdtemp(prefix="sbxb-", dir="/tmp"))
    runtime = DockerSandboxRuntime(
        client,
        DockerSandboxConfig(image=image, instance_id=instance_id, data_dir=data_dir),
        ServiceLogger("bench-environment"),
    )
    try:
        session = runtime.create(
            session_id=uuid4(), chat_id=uuid4(), created_at=CREATED_AT, expires_at=EXPIRES_AT
        )
        started = time.monotonic()
        first = runtime.execute(
            session.container_id, ExecutionRequest(PLOT, Language.PYTHON, 120.0)
        )
        cold = time.monotonic() - started
        started = time.monotonic()
        runtime.execute(session.container_id, ExecutionRequest(PLOT, Language.PYTHON, 120.0))
        warm = time.monotonic() - started
        rss = runtime.execute(
            session.container_id,
            ExecutionRequest(
                "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
                Language.PYTHON,
                10.0,
            ),
        )
        return {
            "ok": first.stdout.strip() == "ok",
            "first_import_and_plot_s": round(cold, 2),
            "second_plot_s": round(warm, 3),
            "interpreter_max_rss_mb": round(int(rss.stdout.strip() or 0) / 1024, 1),
        }
    finally:
        remove_instance_containers(instance_id)
        runtime.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def environment_build(client: docker.APIClient, base: str, package: str) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="sbx-bench-l2-"))
    repository = f"sandboxd-env-bench-{uuid4().hex[:8]}"
    logger = ServiceLogger("bench-environment")
    store = DockerEnvironmentStore(
        client,
        DockerEnvironmentConfig(
            base_image=base, data_dir=scratch, service_version="0.1.0", repository=repository
        ),
        SystemClock(),
        logger,
    )
    environment = Environment(Language.PYTHON, (package,))
    try:
        started = time.monotonic()
        built = store.ensure(environment)
        cold = time.monotonic() - started
        started = time.monotonic()
        store.ensure(environment)
        warm = time.monotonic() - started
        report = {
            "package": package,
            "key": built.key,
            "cold_build_s": round(cold, 2),
            "warm_find_ms": round(warm * 1000, 1),
            "own_layer_mb": mb(built.size_bytes),
        }
        report["l3"] = l3_round_trip(built.reference, built.key, scratch)
        return report
    finally:
        remove_repository(client, repository)
        shutil.rmtree(scratch, ignore_errors=True)


def l3_round_trip(reference: str, key: str, scratch: Path) -> dict:
    import boto3

    tarball = scratch / "image.tar"
    subprocess.run(["docker", "save", "-o", str(tarball), reference], check=True)
    with moto_bucket("sandboxd-bench", ServiceLogger("bench-environment")) as (endpoint, store):
        started = time.monotonic()
        store.upload(ArtifactKind.IMAGE, key, tarball)
        upload = time.monotonic() - started
        head = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", **MOTO_CREDENTIALS
        ).head_object(Bucket="sandboxd-bench", Key=ArtifactKind.IMAGE.object_key(key))
        started = time.monotonic()
        store.download(ArtifactKind.IMAGE, key, scratch / "back.tar")
        download = time.monotonic() - started
    return {
        "image_tar_mb": mb(tarball.stat().st_size),
        "compressed_mb": mb(head["ContentLength"]),
        "upload_s": round(upload, 2),
        "download_s": round(download, 2),
        "note": "docker save of the whole image (base layers included), moto on loopback",
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def first_result_s(runtime: DockerSandboxRuntime, image: str | None, rounds: int) -> float:
    """Median of create + first ``print(1)`` for a new chat (the sandbox removed after each)."""
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        session = runtime.create(
            session_id=uuid4(),
            chat_id=uuid4(),
            created_at=CREATED_AT,
            expires_at=EXPIRES_AT,
            image=image,
        )
        result = runtime.execute(session.container_id, ExecutionRequest("print(1)"))
        times.append(time.monotonic() - started)
        assert result.stdout.strip() == "1", result.stderr
        runtime.stop(session.container_id)
    return _median(times)


def pip_in_fresh_container(base: str, packages: tuple[str, ...]) -> dict:
    """``pip install`` of the set in a fresh container (what the L2 replaces), configured as the
    host's pip is: host network (the bridge has no route to PyPI here), the host's PIP_*
    variables, pip.conf, CA bundle and local wheel directories mounted read-only."""
    mounts: list[str] = []
    config_files = {
        "/etc/ssl/certs": "/etc/ssl/certs",
        "/etc/pip.conf": "/etc/pip.conf",
        str(Path.home() / ".config/pip/pip.conf"): "/root/.config/pip/pip.conf",
    }
    for path, target in config_files.items():
        if Path(path).exists():
            mounts += ["-v", f"{path}:{target}:ro"]
    for variable, value in os.environ.items():
        if variable.startswith("PIP_"):
            mounts += ["-e", f"{variable}={value}"]
    for directory in ("/opt/wheels", "/opt/pypi", "/opt/pypi-more"):
        if Path(directory).is_dir():
            mounts += ["-v", f"{directory}:{directory}:ro"]
    started = time.monotonic()
    done = subprocess.run(
        [
            "docker", "run", "--rm", "--network", "host", "--user", "0", *mounts, base,
            "python3", "-m", "pip", "install", "--break-system-packages", "--no-cache-dir",
            "--disable-pip-version-check", "--root-user-action=ignore", *packages,
        ],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        return {"ok": False, "error": done.stderr.strip().splitlines()[-1:]}
    return {"ok": True, "s": round(seconds, 2)}


def package_environments(
    client: docker.APIClient,
    base: str,
    packages: tuple[str, ...],
    artifacts: S3ArtifactStore,
    rounds: int,
) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="sbx-bench-pkg-", dir="/tmp"))
    repositories = [f"sandboxd-env-bench-{uuid4().hex[:8]}" for _ in range(2)]
    logger = ServiceLogger("bench-environment")

    def store(index: int) -> DockerEnvironmentStore:
        return DockerEnvironmentStore(
            client,
            DockerEnvironmentConfig(
                base_image=base,
                data_dir=scratch / f"service-{index}",
                service_version="0.1.0",
                repository=repositories[index],
            ),
            SystemClock(),
            logger,
            artifacts=artifacts,
        )

    instance_id = f"bench-{uuid4().hex[:12]}"
    runtime = DockerSandboxRuntime(
        client,
        DockerSandboxConfig(image=base, instance_id=instance_id, data_dir=scratch / "sandboxes"),
        logger,
    )
    environment = Environment(Language.PYTHON, packages)
    try:
        first = store(0)
        started = time.monotonic()
        built = first.ensure(environment)
        cold_build = time.monotonic() - started
        first.wait_for_uploads()
        second = store(1)
        started = time.monotonic()
        loaded = second.ensure(environment)
        l3 = time.monotonic() - started
        first_result_s(runtime, None, 1)  # warm the engine's caches for both images alike
        first_result_s(runtime, loaded.reference, 1)
        # Alternated, so that drift in the shared machine's load hits both alike.
        base_times, env_times = [], []
        for _ in range(rounds):
            base_times.append(first_result_s(runtime, None, 1))
            env_times.append(first_result_s(runtime, loaded.reference, 1))
        base_first, env_first = _median(base_times), _median(env_times)
        return {
            "packages": list(packages),
            "own_layer_mb": mb(built.size_bytes),
            "first_result_base_s": round(base_first, 3),
            "first_result_environment_s": round(env_first, 3),
            "first_result_ratio": round(env_first / base_first, 2),
            "first_result_target": "<= 1.2",
            "cold_build_s": round(cold_build, 2),
            "pip_install_fresh_container": pip_in_fresh_container(base, packages),
            "l3_download_decompress_load_s": round(l3, 2),
            "l3_vs_cold_build_ratio": round(l3 / cold_build, 2),
            "l3_target": "<= 0.5",
        }
    finally:
        remove_instance_containers(instance_id)
        runtime.close()
        for repository in repositories:
            remove_repository(client, repository)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_environment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cold", action="store_true", help="also build the rootfs from scratch")
    parser.add_argument("--package", default="tabulate==0.9.0")
    parser.add_argument("--packages", default="tabulate==0.9.0 tomli-w==1.0.0 humanize==4.9.0")
    parser.add_argument(
        "--only-packages", action="store_true", help="only the package-environment figures"
    )
    parser.add_argument(
        "--runtime",
        choices=("docker", "qemu", "all"),
        default="docker",
        help="whose package-environment figures (qemu: microVMs, the image set must be built)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="first-result samples per side")
    args = parser.parse_args()
    configure_logging("warning")
    logger = ServiceLogger("bench-environment")
    packages = tuple(args.packages.split())
    data_dir = Settings().data_dir
    report: dict = {"benchmark": "environment", "load_avg_1m_at_start": os.getloadavg()[0]}
    client = docker.APIClient(version="auto", timeout=600)
    if args.runtime in ("docker", "all"):
        if args.only_packages:
            image = ensure_docker_image(client, data_dir)
        else:
            report["default_image"] = default_image(client, data_dir, args.cold)
            image = report["default_image"]["docker_image"]
            report["first_plot_docker"] = first_plot(client, image)
            report["environment_build_docker"] = environment_build(client, image, args.package)
        with moto_bucket("sandboxd-bench-envs", logger) as (_endpoint, artifacts):
            report["package_environments_docker"] = package_environments(
                client, image, packages, artifacts, args.rounds
            )
    if args.runtime in ("qemu", "all"):
        from bench.environment_qemu import package_environments_qemu

        with moto_bucket("sandboxd-bench-qemu-envs", logger) as (_endpoint, artifacts):
            report["package_environments_qemu"] = package_environments_qemu(
                artifacts, packages, args.rounds, logger
            )
    report["load_avg_1m_at_end"] = os.getloadavg()[0]
    emit(report)


if __name__ == "__main__":
    main()
