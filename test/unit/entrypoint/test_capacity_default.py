"""The default sandbox cap comes from the host's memory and the per-sandbox limit."""

from __future__ import annotations

from entrypoint.capacity import default_max_sandboxes, per_sandbox_mb
from entrypoint.settings import Settings

GIB = 1024**3


def test_docker_counts_the_memory_limit_and_the_ram_backed_workspace() -> None:
    settings = Settings(docker_memory_mb=512, docker_workspace_mb=256, docker_tmp_mb=16)
    assert per_sandbox_mb(settings) == 784
    # 80 % of 23 GiB is 18841 MiB: 24 sandboxes of 784 MiB.
    assert default_max_sandboxes(settings, 23 * GIB) == 24


def test_qemu_counts_the_vm_memory() -> None:
    settings = Settings(runtime="qemu", qemu_memory_mb=256)
    assert default_max_sandboxes(settings, 10 * GIB) == 32


def test_at_least_one_and_none_when_memory_is_unknown() -> None:
    assert default_max_sandboxes(Settings(), 100 * 1024 * 1024) == 1
    assert default_max_sandboxes(Settings(), None) is None
