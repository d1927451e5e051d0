"""L3 for QEMU environments and ``sandboxd env`` on the QEMU store, against a real S3 endpoint
(moto's server on loopback) and real VMs: service A (the CLI, SANDBOXD_RUNTIME=qemu) builds an
environment disk and uploads it; service B, with its own data directory and a builder that cannot
fetch anything, gets it from the shared bucket without building and boots a VM from it. A corrupt
download or an unreachable S3 falls through to a local build; S3 never fails the request."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers

from adapter.environment.host_fetch import HostFetchConfig
from adapter.qemu.envdisk import backing_file
from adapter.qemu.environment import QemuEnvironmentConfig, QemuEnvironmentStore
from adapter.qemu.runtime import QemuSandboxRuntime
from adapter.s3.artifact_store import S3ArtifactStore
from domain.environment import ArtifactKind, Environment
from domain.errors import EnvironmentBuildError
from domain.execution import Language
from entrypoint.cli import main
from entrypoint.container import Container
from entrypoint.settings import SERVICE_VERSION
from testkit.environment import NO_PIP, CountingObserver
from testkit.fakes import FakeLogger
from testkit.qemu import RuntimeFactory, create_vm, run_ok
from testkit.s3 import CREDENTIALS, free_port, quick_failing_store

pytestmark = pytest.mark.qemu

TABULATE = Environment(Language.PYTHON, ("tabulate==0.9.0",))
IMPORT_TABULATE = "import tabulate; print(tabulate.__version__)"


@pytest.fixture
def artifact_stores() -> Iterator[list[S3ArtifactStore]]:
    made: list[S3ArtifactStore] = []
    yield made
    for store in made:
        store.close()


def _store(
    runtime: QemuSandboxRuntime,
    logger: FakeLogger,
    endpoint: str,
    bucket: str,
    made: list[S3ArtifactStore],
    fetch: HostFetchConfig = NO_PIP,
) -> tuple[QemuEnvironmentStore, CountingObserver]:
    artifacts = quick_failing_store(endpoint, bucket, logger)
    made.append(artifacts)
    observer = CountingObserver()
    config = QemuEnvironmentConfig(service_version=SERVICE_VERSION, snapshot=False, fetch=fetch)
    return QemuEnvironmentStore(runtime, config, logger, artifacts=artifacts, observer=observer), (
        observer
    )


@pytest.fixture
def cli_a(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    qemu_image_dir: Path,
    s3_endpoint: str,
    bucket: str,
) -> Iterator[Container]:
    """Service A's composition root, configured the way an operator configures it."""
    for name in [name for name in os.environ if name.startswith("SANDBOXD_")]:
        monkeypatch.delenv(name)
    settings = {
        "SANDBOXD_RUNTIME": "qemu",
        "SANDBOXD_DATA_DIR": str(tmp_path / "service-a"),
        "SANDBOXD_QEMU_IMAGE_DIR": str(qemu_image_dir),
        "SANDBOXD_QEMU_SNAPSHOT": "false",
        "SANDBOXD_S3_BUCKET": bucket,
        "SANDBOXD_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["secret_access_key"],
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    container = Container()
    yield container
    container.qemu_runtime().close()
    container.artifact_store().close()


def _cli_json(container: Container, capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main(list(argv), container) == 0
    return json.loads(capsys.readouterr().out)


def test_env_cli_on_qemu_and_a_second_service_gets_the_disk_from_s3_without_building(
    cli_a: Container,
    make_runtime: RuntimeFactory,
    tmp_path: Path,
    s3_endpoint: str,
    bucket: str,
    artifact_stores: list[S3ArtifactStore],
    capsys: pytest.CaptureFixture[str],
) -> None:
    built = _cli_json(cli_a, capsys, "env", "build", "--language", "python", "tabulate==0.9.0")
    assert isinstance(cli_a.environment_store(), QemuEnvironmentStore)
    assert isinstance(built, dict)
    assert built["packages"] == ["tabulate==0.9.0"] and built["l3"] is True
    assert Path(built["reference"]).is_file() and built["size_bytes"] > 0
    key = built["key"]
    listed = _cli_json(cli_a, capsys, "env", "list")
    assert isinstance(listed, list) and len(listed) == 1
    assert {k: listed[0][k] for k in ("key", "packages", "size_bytes", "l2", "l3")} == {
        "key": key,
        "packages": ["tabulate==0.9.0"],
        "size_bytes": built["size_bytes"],
        "l2": True,
        "l3": True,
    }
    assert listed[0]["last_used"]

    # Service B: its own data directory, same image set, same bucket; it cannot build.
    runtime_b, logger_b = make_runtime(data_dir=tmp_path / "service-b", preload=(), snapshot=False)
    store_b, seen_b = _store(runtime_b, logger_b, s3_endpoint, bucket, artifact_stores)
    cli_b = Container()
    cli_b.environment_store.override(providers.Object(store_b))
    listed_b = _cli_json(cli_b, capsys, "env", "list")
    assert isinstance(listed_b, list)
    assert [(row["key"], row["l2"], row["l3"]) for row in listed_b] == [(key, False, True)]

    loaded = store_b.ensure(TABULATE)

    assert loaded.key == key and loaded.reference != built["reference"]
    assert seen_b.hits == ["l3"] and seen_b.builds == 0 and seen_b.downloads == 1
    assert logger_b.named("environment_downloaded")
    assert not logger_b.named("environment_built")
    assert not list(runtime_b.environment_disks.staging_root().iterdir())
    assert backing_file(Path(loaded.reference)) == str(runtime_b.image().base)
    session = create_vm(runtime_b, loaded.key)
    version = run_ok(runtime_b, session.container_id, IMPORT_TABULATE)
    assert version.strip() == "0.9.0"
    runtime_b.stop(session.container_id)
    store_b.ensure(TABULATE)
    assert seen_b.hits == ["l3", "l2"]

    removed = _cli_json(cli_a, capsys, "env", "prune", "--all")
    assert removed == {"removed": [key]}
    listed = _cli_json(cli_a, capsys, "env", "list")
    assert isinstance(listed, list)
    assert [(row["key"], row["l2"], row["l3"]) for row in listed] == [(key, False, True)]


def test_a_corrupt_download_is_discarded_and_the_key_built_locally(
    make_runtime: RuntimeFactory,
    tmp_path: Path,
    s3_endpoint: str,
    bucket: str,
    artifact_stores: list[S3ArtifactStore],
) -> None:
    runtime, logger = make_runtime(data_dir=tmp_path / "service-c", preload=(), snapshot=False)
    store, seen = _store(runtime, logger, s3_endpoint, bucket, artifact_stores)
    key = store.key_for(TABULATE)
    garbage = tmp_path / "garbage.qcow2"
    garbage.write_bytes(b"QFI\xfb" + bytes(range(256)) * 64)
    artifact_stores[0].upload(ArtifactKind.SNAPSHOT, key, garbage)

    # The builder cannot fetch: the build it falls through to fails with the build's own error.
    with pytest.raises(EnvironmentBuildError):
        store.ensure(TABULATE)

    assert seen.hits == ["miss"] and seen.downloads == 0
    assert [a["key"] for a in logger.named("environment_download_failed")] == [key]
    assert logger.named("environment_build_failed")
    assert store.list_keys() == []
    assert not list(runtime.environment_disks.staging_root().iterdir())


def test_an_unreachable_s3_never_fails_the_request(
    make_runtime: RuntimeFactory,
    tmp_path: Path,
    bucket: str,
    artifact_stores: list[S3ArtifactStore],
) -> None:
    runtime, logger = make_runtime(data_dir=tmp_path / "service-d", preload=(), snapshot=False)
    dead = f"http://127.0.0.1:{free_port()}"
    store, seen = _store(runtime, logger, dead, bucket, artifact_stores)

    with pytest.raises(EnvironmentBuildError):  # the build's error, not the artifact store's
        store.ensure(TABULATE)

    assert seen.hits == ["miss"]
    assert logger.named("environment_download_failed")
    assert store.in_artifact_store(store.key_for(TABULATE)) is None
