"""host_fetch's command lines and error reading, with a stand-in pip that records its argv."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from adapter.environment.host_fetch import HostFetchConfig, download_wheels, stage_npm_packages
from domain.errors import EnvironmentBuildError


def recording_tool(tmp_path: Path, output: str, exit_code: int, wheel: str | None = None):
    """A command that records its argv, prints ``output``, optionally drops a file into --dest."""
    record = tmp_path / "argv.json"
    script = (
        "import json, sys, pathlib\n"
        f"pathlib.Path({str(record)!r}).write_text(json.dumps(sys.argv[1:]))\n"
        f"print({output!r})\n"
        f"wheel = {wheel!r}\n"
        "if wheel and '--dest' in sys.argv:\n"
        "    pathlib.Path(sys.argv[sys.argv.index('--dest') + 1], wheel).write_text('')\n"
        f"sys.exit({exit_code})\n"
    )
    return (sys.executable, "-c", script), record


def test_pip_download_asks_for_guest_wheels_only_and_ends_options(tmp_path: Path) -> None:
    command, record = recording_tool(tmp_path, "Saved", 0, wheel="tabulate-0.9.0-py3-none-any.whl")
    dest = tmp_path / "wheels"
    dest.mkdir()
    found = download_wheels(
        HostFetchConfig(pip_command=command), ["tabulate==0.9.0"], dest, lambda _m: None
    )
    argv = json.loads(record.read_text())
    assert [p.name for p in found] == ["tabulate-0.9.0-py3-none-any.whl"]
    assert argv[0] == "download"
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "3.11"
    assert argv[argv.index("--abi") + 1] == "cp311"
    assert "manylinux2014_x86_64" in argv and "manylinux_2_36_x86_64" in argv
    assert "--no-binary" not in " ".join(argv)
    assert argv[-2:] == ["--", "tabulate==0.9.0"]


def test_a_package_without_a_wheel_is_named(tmp_path: Path) -> None:
    command, _ = recording_tool(
        tmp_path,
        "ERROR: Could not find a version that satisfies the requirement foo-bar==1.0 "
        "(from versions: none)\n"
        "ERROR: No matching distribution found for foo-bar==1.0",
        1,
    )
    with pytest.raises(EnvironmentBuildError) as caught:
        download_wheels(HostFetchConfig(pip_command=command), ["foo-bar==1.0"], tmp_path, print)
    assert caught.value.package == "foo-bar"
    assert "foo-bar" in str(caught.value)
    assert "never built from source" in str(caught.value)


def test_other_pip_failures_carry_the_output_tail(tmp_path: Path) -> None:
    command, _ = recording_tool(tmp_path, "ERROR: network is down", 2)
    with pytest.raises(EnvironmentBuildError, match="network is down") as caught:
        download_wheels(HostFetchConfig(pip_command=command), ["x"], tmp_path, print)
    assert caught.value.package is None


def test_anything_but_wheels_in_the_download_dir_is_refused(tmp_path: Path) -> None:
    command, _ = recording_tool(tmp_path, "Saved", 0, wheel="evil-1.0.tar.gz")
    dest = tmp_path / "wheels"
    dest.mkdir()
    with pytest.raises(EnvironmentBuildError, match="non-wheel"):
        download_wheels(HostFetchConfig(pip_command=command), ["evil"], dest, print)


def test_a_missing_tool_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentBuildError, match="could not run"):
        download_wheels(HostFetchConfig(pip_command=("/nonexistent/pip",)), ["x"], tmp_path, print)


def test_npm_install_ignores_scripts_and_ends_options(tmp_path: Path) -> None:
    command, record = recording_tool(tmp_path, "added 1 package", 0)
    modules = stage_npm_packages(
        HostFetchConfig(npm_command=command), ["is-number@7.0.0"], tmp_path / "npm", print
    )
    argv = json.loads(record.read_text())
    assert modules == tmp_path / "npm" / "node_modules"
    assert argv[0] == "install"
    assert "--ignore-scripts" in argv
    assert argv[-2:] == ["--", "is-number@7.0.0"]


def test_npm_not_found_names_the_package(tmp_path: Path) -> None:
    command, _ = recording_tool(
        tmp_path,
        "npm ERR! code E404\nnpm ERR! 404 Not Found - GET https://registry/nope-pkg - Not found\n"
        "npm ERR! 404  'nope-pkg@1.0.0' is not in this registry.",
        1,
    )
    with pytest.raises(EnvironmentBuildError) as caught:
        stage_npm_packages(
            HostFetchConfig(npm_command=command), ["nope-pkg@1.0.0"], tmp_path, print
        )
    assert caught.value.package == "nope-pkg"
