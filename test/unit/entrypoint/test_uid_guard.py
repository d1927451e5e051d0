"""The service refuses to run under the uid its sandboxes run as (issue 11, item 6)."""

from __future__ import annotations

import asyncio
import os

import pytest

from entrypoint.errors import SandboxUidConflictError, error_row
from entrypoint.serve import Service, check_sandbox_uid, serve
from testkit.container import make_container


def test_the_same_uid_as_the_sandbox_user_is_refused() -> None:
    with pytest.raises(SandboxUidConflictError, match="SANDBOXD_DOCKER_USER"):
        check_sandbox_uid(own_uid=1000, runtime="docker", docker_user="1000:1000")
    with pytest.raises(SandboxUidConflictError):
        check_sandbox_uid(own_uid=1000, runtime="docker", docker_user="1000")


def test_another_uid_or_a_microvm_runtime_is_fine() -> None:
    check_sandbox_uid(own_uid=0, runtime="docker", docker_user="1000:1000")
    check_sandbox_uid(own_uid=1000, runtime="qemu", docker_user="1000:1000")


def test_serve_does_not_start_under_the_sandbox_uid(capsys: pytest.CaptureFixture[str]) -> None:
    container = make_container(docker_user=f"{os.getuid()}:{os.getgid()}")

    with pytest.raises(SandboxUidConflictError):
        asyncio.run(Service(container).run(handle_signals=False))
    assert serve(container) == error_row(SandboxUidConflictError("x")).exit_code
    assert "SANDBOXD_DOCKER_USER" in capsys.readouterr().err
