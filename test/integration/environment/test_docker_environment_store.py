"""DockerEnvironmentStore against the real Docker engine and registries (PyPI, npm)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tarfile
import threading
from io import BytesIO
from pathlib import Path

import docker
import pytest

from adapter.environment.docker_images import LABEL_CREATED, LABEL_KEY, LABEL_PACKAGES
from adapter.environment.host_fetch import HostFetchConfig
from domain.environment import Environment
from domain.errors import EnvironmentBuildError
from domain.execution import Language
from testkit.environment import StoreFactory, build_containers, image_exists, sandbox_from
from testkit.fakes import FakeLogger

pytestmark = pytest.mark.docker

TABULATE = Environment(Language.PYTHON, ("tabulate==0.9.0",))


def test_builds_an_environment_that_a_sandbox_imports(make_store: StoreFactory, client) -> None:
    logger = FakeLogger()
    store = make_store(logger)
    built = store.ensure(TABULATE)

    assert built.key == store.key_for(TABULATE)
    assert built.key.startswith("python-v0.1-")
    assert built.reference.endswith(f":{built.key}")
    labels = client.inspect_image(built.reference)["Config"]["Labels"]
    assert labels[LABEL_KEY] == built.key
    assert labels[LABEL_PACKAGES] == "tabulate==0.9.0"
    assert labels[LABEL_CREATED]
    assert build_containers(client, built.reference) == []

    with sandbox_from(client, built.reference) as sandbox:
        result = sandbox.run(
            "import tabulate, pandas, matplotlib\n"
            "print(tabulate.__version__, tabulate.__file__)\n"
            "print(tabulate.tabulate([[1, 2]], headers=['a', 'b']))"
        )
        assert result.exit_code == 0, result.stderr
        assert result.stdout.startswith("0.9.0 /usr/local/lib/python3.11/dist-packages/")
        # The environment image keeps the base image's command and user: the agent runs as 1000.
        whoami = sandbox.run("import os; print(os.getuid())")
        assert whoami.stdout.strip() == "1000"

    # Found, not rebuilt, also by a second store of the same host.
    again = make_store(logger).ensure(TABULATE)
    assert again == built
    assert logger.events().count("environment_built") == 1
    assert "environment_found" in logger.events()
    assert store.find(built.key) == built


def test_the_base_environment_is_the_base_image(make_store: StoreFactory, base_image) -> None:
    built = make_store().ensure(Environment(Language.PYTHON))
    assert built.reference == base_image
    assert built.key.endswith("-base")


def write_marker_sdist(index: Path, marker: Path) -> None:
    """A source-only package whose build step writes ``marker``: proof that it ran."""
    name = "sandboxd_marker_pkg-0.1"
    setup = (
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('package code ran here')\n"
        "from setuptools import setup\n"
        "setup(name='sandboxd-marker-pkg', version='0.1')\n"
    )
    pkg_info = "Metadata-Version: 2.1\nName: sandboxd-marker-pkg\nVersion: 0.1\n"
    with tarfile.open(index / f"{name}.tar.gz", "w:gz") as archive:
        for file_name, text in (("setup.py", setup), ("PKG-INFO", pkg_info)):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{file_name}")
            info.size = len(data)
            archive.addfile(info, BytesIO(data))


def test_a_package_without_a_wheel_is_refused_on_the_host(
    make_store: StoreFactory, client, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    index.mkdir()
    marker = tmp_path / "MARKER"
    write_marker_sdist(index, marker)
    local_index = ("--no-index", "--find-links", str(index))

    # Control: an ordinary pip download of it runs its build step on the host.
    subprocess.run(
        [sys.executable, "-m", "pip", "download", *local_index,
         "--no-build-isolation", "--no-deps", "-d", str(tmp_path / "control"),
         "sandboxd-marker-pkg"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert marker.exists(), "the control download did not run the package's build step"
    marker.unlink()

    logger = FakeLogger()
    store = make_store(logger, fetch=HostFetchConfig(pip_index_args=local_index))
    environment = Environment(Language.PYTHON, ("sandboxd-marker-pkg==0.1",))
    with pytest.raises(EnvironmentBuildError) as caught:
        store.ensure(environment)

    assert caught.value.package == "sandboxd-marker-pkg"
    assert "sandboxd-marker-pkg" in str(caught.value)
    assert not marker.exists()
    key = store.key_for(environment)
    assert not image_exists(store.images.tag(key))
    assert build_containers(client, store.images.tag(key)) == []
    assert "environment_build_failed" in logger.events()
    assert list((tmp_path / "data" / "environments" / "staging").iterdir()) == []


def test_two_builders_of_one_key_build_once(make_store: StoreFactory) -> None:
    logger = FakeLogger()
    environment = Environment(Language.PYTHON, ("six==1.16.0",))
    results = []

    def build() -> None:
        results.append(make_store(logger).ensure(environment))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert logger.events().count("environment_built") == 1


def test_least_recently_used_environments_are_evicted_past_the_budget(
    make_store: StoreFactory,
) -> None:
    logger = FakeLogger()
    store = make_store(logger, max_total_mb=0)
    first = store.ensure(TABULATE)
    second = store.ensure(Environment(Language.PYTHON, ("six==1.16.0",)))
    assert first.size_bytes > 0
    assert store.find(first.key) is None
    assert store.find(second.key) == second  # the one just built is never evicted
    assert [
        attrs["key"] for _l, event, attrs in logger.messages if event == "environment_evicted"
    ] == [first.key]


def test_a_javascript_environment_without_install_scripts(make_store: StoreFactory, client) -> None:
    built = make_store().ensure(Environment(Language.JAVASCRIPT, ("is-number@7.0.0",)))
    with sandbox_from(client, built.reference) as sandbox:
        result = sandbox.run(
            "console.log(require('is-number')(5), require('is-number')('x'))",
            language=Language.JAVASCRIPT,
        )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "true false"


def test_leftovers_of_a_crashed_builder_are_cleared_before_building(
    make_store: StoreFactory, client, base_image: str, tmp_path: Path
) -> None:
    """Only this store's: another service on the engine (its own repository) building the same
    key at the same time keeps its build container."""
    from adapter.environment.docker_images import LABEL_BUILDER

    store = make_store()
    environment = Environment(Language.PYTHON, ("six==1.16.0",))
    key = store.key_for(environment)
    tag = store.images.tag(key)
    crashed = client.create_container(base_image, command=["true"], labels={LABEL_BUILDER: tag})
    elsewhere = f"sandboxd-env-other-{key[-8:]}:{key}"
    busy = client.create_container(base_image, command=["true"], labels={LABEL_BUILDER: elsewhere})
    staging = tmp_path / "data" / "environments" / "staging" / f"{key}-crashed"
    staging.mkdir(parents=True)
    try:
        built = store.ensure(environment)
        assert built.key == key
        assert build_containers(client, tag) == []
        assert [c["Id"] for c in build_containers(client, elsewhere)] == [busy["Id"]]
        assert not staging.exists()
    finally:
        for container in (crashed, busy):
            with contextlib.suppress(docker.errors.NotFound):  # crashed: removed by the store
                client.remove_container(container["Id"], force=True)
