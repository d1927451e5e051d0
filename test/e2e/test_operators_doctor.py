"""``sandboxd doctor`` run for real on this host: the real Docker engine, PostgreSQL and QEMU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from entrypoint.doctor import Status, check_memory, exit_status
from entrypoint.settings import Settings
from testkit.pg import temporary_database
from testkit.service import ROOT

pytestmark = pytest.mark.docker


def doctor(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SANDBOXD_")}
    env["SANDBOXD_DATA_DIR"] = str(tmp_path / "data")
    env.update({f"SANDBOXD_{key.upper()}": value for key, value in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "entrypoint.cli", "doctor", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Check name -> its whole line."""
    found = {}
    for line in done.stdout.splitlines():
        name = line[7:].split(":", 1)[0]
        found[name] = line
    return found


def test_healthy_host_passes_with_the_engine_version(tmp_path: Path) -> None:
    version = docker.from_env().version()["Version"]
    done = doctor(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    found = lines(done)
    assert set(found) == {
        "docker",
        "gvisor",
        "qemu",
        "kvm",
        "images",
        "database",
        "disk",
        "memory",
        "s3",
    }
    assert found["docker"].startswith("[ok  ] docker: engine ")
    assert version in found["docker"]
    # A fresh SQLite file migrates itself on start: fine.
    assert found["database"].startswith("[ok  ] database: sqlite:///")
    assert "migrates itself" in found["database"]
    assert found["s3"] == "[skip] s3: not configured (no SANDBOXD_S3_* settings)"


def test_broken_database_url_fails(tmp_path: Path) -> None:
    done = doctor(tmp_path, database_url="postgresql+psycopg://sandboxd:secret@127.0.0.1:1/nothing")
    assert done.returncode == 1
    line = lines(done)["database"]
    assert line.startswith("[FAIL] database: cannot reach postgresql+psycopg://sandboxd:***@")
    assert "-> fix: " in line
    assert "secret" not in done.stdout


def test_unknown_docker_socket_fails(tmp_path: Path) -> None:
    done = doctor(tmp_path, docker_base_url=f"unix://{tmp_path}/no-such-docker.sock")
    assert done.returncode == 1
    line = lines(done)["docker"]
    assert line.startswith("[FAIL] docker: no Docker engine answers at unix://")
    assert "-> fix: start dockerd" in line


def test_unknown_docker_socket_is_not_fatal_for_qemu(tmp_path: Path) -> None:
    done = doctor(
        tmp_path,
        "--json",
        runtime="qemu",
        docker_base_url=f"unix://{tmp_path}/no-such-docker.sock",
    )
    checks = {check["name"]: check for check in json.loads(done.stdout)}
    assert checks["docker"]["status"] == "warn"
    assert not checks["docker"]["fatal"]
    assert checks["qemu"]["status"] == "ok"
    assert done.returncode == (1 if any(check["fatal"] for check in checks.values()) else 0)


def test_postgres_behind_head_fails_until_migrated(tmp_path: Path) -> None:
    with temporary_database("sandboxd_doctor") as url:
        behind = doctor(tmp_path, database_url=url)
        assert behind.returncode == 1
        assert "no sandboxd schema" in lines(behind)["database"]
        assert lines(behind)["database"].endswith("-> fix: sandboxd migrate (once, from one host)")
        migrate = subprocess.run(
            [sys.executable, "-m", "entrypoint.cli", "migrate"],
            cwd=ROOT,
            env={**os.environ, "SANDBOXD_DATABASE_URL": url},
            capture_output=True,
            text=True,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr
        current = doctor(tmp_path, database_url=url)
        assert lines(current)["database"].startswith("[ok  ] database: postgresql+psycopg://")
        assert "(head)" in lines(current)["database"]


def test_gvisor_line_agrees_with_the_engine(tmp_path: Path) -> None:
    registered = "runsc" in (docker.from_env().info().get("Runtimes") or {})
    done = doctor(tmp_path, docker_runtime="runsc")
    line = lines(done)["gvisor"]
    if registered:
        assert line.startswith("[ok  ] gvisor: runsc is registered")
    else:
        assert line.startswith("[FAIL] gvisor: SANDBOXD_DOCKER_RUNTIME=runsc but dockerd knows")
        assert done.returncode == 1


def test_memory_below_one_sandbox_is_fatal() -> None:
    settings = Settings(docker_memory_mb=512)
    short = check_memory(settings, available=300 * 1024 * 1024)
    assert short.status is Status.FAIL and short.fatal
    assert exit_status([short]) == 1
    roomy = check_memory(settings, available=8 * 1024 * 1024 * 1024)
    assert roomy.status is Status.OK
    assert exit_status([roomy]) == 0
