"""Host-side fetching of an environment's packages: built artifacts only, no package code runs.

Python: ``pip download --only-binary=:all:`` for the guest's interpreter and platform (CPython
3.11, glibc 2.36 manylinux tags of Debian bookworm on x86_64), dependencies included. With
``--only-binary=:all:`` pip never builds an sdist, so no ``setup.py`` or build backend runs on
the host; a package without a matching wheel is refused with its name.

JavaScript: ``npm install --ignore-scripts`` into a staging directory: npm resolves and unpacks
the tarballs of the packages and their dependencies but runs none of their lifecycle scripts.
The guest image has no npm, so install scripts do not run in the build container either:
packages that need one (native addons) are not supported yet.

Requirements arrive validated by ``domain.environment`` and are passed after ``--`` as a second
line of defence against option injection.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from domain.errors import EnvironmentBuildError

Progress = Callable[[str], None]

# Debian bookworm: CPython 3.11, glibc 2.36.
GUEST_PYTHON_VERSION = "3.11"
GUEST_PLATFORMS: tuple[str, ...] = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
)

_NO_DISTRIBUTION = re.compile(r"No matching distribution found for ([A-Za-z0-9._\-\[\]]+)")
_NO_VERSION = re.compile(
    r"Could not find a version that satisfies the requirement ([A-Za-z0-9._\-\[\]]+)"
)
_NPM_NOT_FOUND = re.compile(r"404\s+'?(@?[a-z0-9._~/-]+)@")


@dataclass(frozen=True)
class HostFetchConfig:
    """How the host reaches the registries. ``pip_index_args`` goes in front of the packages,
    e.g. ``("--index-url", URL)`` for a mirror, or ``("--no-index", "--find-links", DIR)``."""

    # The service's own pip (a dependency), not whatever "python3" is on PATH.
    pip_command: tuple[str, ...] = (sys.executable, "-m", "pip")
    pip_index_args: tuple[str, ...] = ()
    npm_command: tuple[str, ...] = ("npm",)
    npm_registry: str | None = None
    timeout_s: float = 600.0
    platforms: tuple[str, ...] = GUEST_PLATFORMS
    python_version: str = GUEST_PYTHON_VERSION
    extra_env: dict[str, str] = field(default_factory=dict)


def download_wheels(
    config: HostFetchConfig, packages: Sequence[str], destination: Path, progress: Progress
) -> list[Path]:
    """Wheels for ``packages`` and their dependencies into ``destination``."""
    platform_args = [arg for platform in config.platforms for arg in ("--platform", platform)]
    command = [
        *config.pip_command,
        "download",
        "--only-binary=:all:",
        "--python-version",
        config.python_version,
        "--implementation",
        "cp",
        "--abi",
        f"cp{config.python_version.replace('.', '')}",
        *platform_args,
        "--dest",
        str(destination),
        "--no-input",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        *config.pip_index_args,
        "--",
        *packages,
    ]
    output = _run(command, config, progress, "pip download")
    if output.returncode != 0:
        package = _first_match((_NO_DISTRIBUTION, _NO_VERSION), output.stdout)
        if package is not None:
            raise EnvironmentBuildError(
                f"no installable wheel of {package} for CPython {config.python_version} "
                "on manylinux x86_64; packages are never built from source on the host",
                package=package,
            )
        raise EnvironmentBuildError(f"pip download failed: {_tail(output.stdout)}")
    wheels = sorted(destination.glob("*.whl"))
    stray = [p.name for p in destination.iterdir() if p.suffix != ".whl"]
    if stray:  # cannot happen with --only-binary; refuse rather than install something else
        raise EnvironmentBuildError(f"pip download left non-wheel files: {', '.join(stray)}")
    return wheels


def stage_npm_packages(
    config: HostFetchConfig, packages: Sequence[str], destination: Path, progress: Progress
) -> Path:
    """``destination/node_modules`` with the packages and their dependencies, scripts not run."""
    destination.mkdir(parents=True, exist_ok=True)
    (destination / "package.json").write_text('{"name": "sandboxd-environment", "private": true}')
    registry = ["--registry", config.npm_registry] if config.npm_registry else []
    command = [
        *config.npm_command,
        "install",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--omit=dev",
        "--install-strategy=hoisted",
        "--prefix",
        str(destination),
        *registry,
        "--",
        *packages,
    ]
    output = _run(command, config, progress, "npm install")
    if output.returncode != 0:
        package = _first_match((_NPM_NOT_FOUND,), output.stdout)
        raise EnvironmentBuildError(
            f"npm could not fetch {package or 'the packages'}: {_tail(output.stdout)}",
            package=package,
        )
    return destination / "node_modules"


def _run(
    command: list[str], config: HostFetchConfig, progress: Progress, what: str
) -> subprocess.CompletedProcess[str]:
    progress(f"{what}: {' '.join(command[command.index('--') + 1 :])}")
    # The operator's pip/npm configuration (mirror, CA bundle) applies; only requirements
    # come from users, and they are validated.
    env = {**os.environ, "PIP_NO_INPUT": "1", **config.extra_env}
    try:
        return subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            timeout=config.timeout_s,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentBuildError(f"{what} could not run: {exc}") from exc


def _first_match(patterns: Sequence[re.Pattern[str]], text: str) -> str | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match is not None:
            return match.group(1)
    return None


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:])
