"""A disk downloaded from S3 becomes an environment entry only when it is a plain qcow2 overlay of
a base image like this host's: then it is re-pointed at the local base. A hostile or broken one
(another backing file, an external data file naming a host file, garbage, a wrong size) is
refused and nothing is kept. Real qemu-img on small images; no VM."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from adapter.qemu.envdisk import EnvironmentDisks, backing_file
from domain.errors import ArtifactStoreUnavailableError

pytestmark = pytest.mark.qemu

KEY = "python-v0.1-0123abcd-00112233aabbccdd"
ROOTFS = "feedc0defeedc0de"


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "here" / "base" / ROOTFS / "base.qcow2"
    path.parent.mkdir(parents=True)
    _qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")
    return path


@pytest.fixture
def disks(tmp_path: Path) -> EnvironmentDisks:
    return EnvironmentDisks(tmp_path / "environments")


def _overlay(path: Path, backing: str, size: str = "64M", *options: str) -> Path:
    """A qcow2 over ``backing`` as another host wrote it (the backing need not exist here)."""
    _qemu_img(
        "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "qcow2", *options,
        str(path), size,
    )  # fmt: skip
    return path


def _garbage(path: Path) -> Path:
    """The qcow2 magic, then nothing a qcow2 header needs."""
    path.write_bytes(b"QFI\xfb" + b"\x00" * 4096)
    return path


def test_a_disk_built_on_another_host_is_re_pointed_at_the_local_base(
    tmp_path: Path, base: Path, disks: EnvironmentDisks
) -> None:
    downloaded = _overlay(tmp_path / "download.qcow2", f"/srv/other/qemu/base/{ROOTFS}/base.qcow2")

    entry = disks.adopt(KEY, downloaded, base, "python", ("tabulate==0.9.0",))

    assert backing_file(entry.disk) == str(base)
    assert disks.load(KEY, base)[0] == entry
    assert entry.packages == ("tabulate==0.9.0",) and entry.language == "python"
    assert not downloaded.exists()
    assert list(disks.staging_root().iterdir()) == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda tmp: _overlay(tmp / "d.qcow2", "/etc/passwd"), id="host-file-backing"),
        pytest.param(
            lambda tmp: _overlay(tmp / "d.qcow2", f"/srv/other/{ROOTFS}/other.qcow2"),
            id="other-base-name",
        ),
        pytest.param(
            lambda tmp: _overlay(tmp / "d.qcow2", f"other/base/{ROOTFS}/base.qcow2"),
            id="relative-backing",
        ),
        pytest.param(
            lambda tmp: _overlay(
                tmp / "d.qcow2",
                f"/srv/other/qemu/base/{ROOTFS}/base.qcow2",
                "64M",
                "-o",
                f"data_file={tmp / 'host-data.raw'}",
            ),
            id="external-data-file",
        ),
        pytest.param(
            lambda tmp: _overlay(tmp / "d.qcow2", f"/srv/x/{ROOTFS}/base.qcow2", "1G"),
            id="other-size",
        ),
        pytest.param(lambda tmp: _garbage(tmp / "d.qcow2"), id="garbage"),
    ],
)
def test_an_unfit_download_is_refused_and_nothing_is_kept(
    tmp_path: Path, base: Path, disks: EnvironmentDisks, make
) -> None:
    downloaded = make(tmp_path)

    with pytest.raises(ArtifactStoreUnavailableError):
        disks.adopt(KEY, downloaded, base, "python", ("tabulate==0.9.0",))

    assert disks.list_keys() == []
    assert disks.load(KEY, base)[0] is None
    assert list(disks.staging_root().iterdir()) == []
