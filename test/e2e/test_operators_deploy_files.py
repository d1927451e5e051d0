"""The deployment files are what the tools accept: systemd-analyze verifies the unit (and rates its
exposure), docker-compose resolves the compose file. Both tools come from Debian's packages
(scripts/setup.sh ops-tools)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from testkit.service import ROOT

UNIT = ROOT / "deploy" / "systemd" / "sandboxd.service"
ENV_FILE = ROOT / "deploy" / "systemd" / "sandboxd.env"
COMPOSE = ROOT / "deploy" / "compose.yaml"
# systemd-analyze security: 0 is fully locked down, 10 fully exposed; 2 or less is "OK".
MAX_EXPOSURE = 2.5


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: scripts/setup.sh ops-tools")
    return path


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root directory with the unit installed as the README says, the distribution's own units
    (for the targets it orders after) and a stand-in for the installed sandboxd command."""
    root = tmp_path / "root"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(
        "/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True
    )
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "etc" / "sandboxd").mkdir(parents=True)
    shutil.copyfile(ENV_FILE, root / "etc" / "sandboxd" / "sandboxd.env")
    command = root / "opt" / "sandboxd" / "bin" / "sandboxd"
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    return root


def _verify(root: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    (root / "etc" / "systemd" / "system" / "sandboxd.service").write_text(unit_text)
    return subprocess.run(
        [_tool("systemd-analyze"), "verify", f"--root={root}", "sandboxd.service"],
        capture_output=True,
        text=True,
        check=False,
    )


def test_systemd_verifies_the_unit_without_a_warning(unit_root: Path) -> None:
    done = _verify(unit_root, UNIT.read_text())
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    # The same check on a unit with a typo complains: the check above can fail.
    broken = _verify(
        unit_root, UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=strictly")
    )
    assert "strictly" in broken.stderr


def test_systemd_rates_the_unit_as_hardened(unit_root: Path) -> None:
    (unit_root / "etc" / "systemd" / "system" / "sandboxd.service").write_text(UNIT.read_text())
    done = subprocess.run(
        [
            _tool("systemd-analyze"),
            "security",
            "--offline=true",
            f"--root={unit_root}",
            "--no-pager",
            "sandboxd.service",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for sandboxd\.service: ([\d.]+)", done.stdout)
    assert found, done.stdout[-2000:] + done.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout[-4000:]


def test_unit_keeps_what_the_service_needs() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["EnvironmentFile"] == ["/etc/sandboxd/sandboxd.env"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["ReadWritePaths"] == ["/var/lib/sandboxd"]
    for flag in ("PrivateTmp", "NoNewPrivileges", "ProtectHome"):
        assert settings[flag] == ["true"], flag
    # The engine's socket is AF_UNIX; the API is TCP.
    families = settings["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert settings["SupplementaryGroups"] == ["docker kvm"]
    assert settings["DeviceAllow"] == ["/dev/kvm rw"]
    # QEMU's TCG writes code it then runs; the Docker runtime chowns its channel dirs.
    assert settings["MemoryDenyWriteExecute"] == ["false"]
    assert all("@privileged" not in value for value in settings["SystemCallFilter"])


def test_compose_file_resolves(tmp_path: Path) -> None:
    compose = _tool("docker-compose")
    done = subprocess.run(
        [compose, "-p", "sandboxd", "-f", str(COMPOSE), "config"],
        env={"PATH": "/usr/bin:/bin", "SANDBOXD_API_KEYS": "k1"},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    service = resolved["services"]["sandboxd"]
    assert service["environment"]["SANDBOXD_API_KEYS"] == "k1"
    assert service["environment"]["SANDBOXD_DATABASE_URL"].startswith(
        "postgresql+psycopg://sandboxd:"
    )
    assert "@postgres:5432/" in service["environment"]["SANDBOXD_DATABASE_URL"]
    volumes = [str(volume) for volume in service["volumes"]]
    assert any("/var/run/docker.sock:/var/run/docker.sock" in volume for volume in volumes)
    # The data dir has the same path inside and out: dockerd resolves bind mounts on the host.
    assert any("/var/lib/sandboxd:/var/lib/sandboxd" in volume for volume in volumes)
    assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert resolved["services"]["migrate"]["command"] == ["migrate"]
    assert resolved["services"]["postgres"]["image"] == "sandboxd-postgres:latest"
    # Without keys the file refuses to resolve: the service must not start open.
    keyless = subprocess.run(
        [compose, "-f", str(COMPOSE), "config"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert keyless.returncode != 0
    assert "SANDBOXD_API_KEYS" in keyless.stderr


def test_compose_variables_reach_both_services(tmp_path: Path) -> None:
    done = subprocess.run(
        [_tool("docker-compose"), "-p", "sandboxd", "-f", str(COMPOSE), "config"],
        env={
            "PATH": "/usr/bin:/bin",
            "SANDBOXD_API_KEYS": "k1",
            "POSTGRES_PASSWORD": "s3cret",
            "SERVICE_IMAGE": "sandboxd-service:abc123",
            "POSTGRES_IMAGE": "postgres:15-bookworm",
            "DATA_DIR": "/srv/sandboxd",
            "HTTP_PORT": "18080",
        },
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    for name in ("migrate", "sandboxd"):
        assert services[name]["image"] == "sandboxd-service:abc123"
        url = services[name]["environment"]["SANDBOXD_DATABASE_URL"]
        assert url == "postgresql+psycopg://sandboxd:s3cret@postgres:5432/sandboxd", url
    # The registry's image instead of the offline one: the same variables and data dir.
    assert services["postgres"]["image"] == "postgres:15-bookworm"
    sandboxd = services["sandboxd"]
    assert sandboxd["environment"]["SANDBOXD_DATA_DIR"] == "/srv/sandboxd"
    assert "/srv/sandboxd:/srv/sandboxd:rw" in sandboxd["volumes"]
    assert "127.0.0.1:18080:8080/tcp" in sandboxd["ports"]
