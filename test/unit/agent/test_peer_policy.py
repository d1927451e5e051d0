"""PeerPolicy's rule on the credentials SO_PEERCRED reports, per runtime.

runc: the host's processes live outside the agent's pid namespace and show as pid 0. gVisor
(runsc --host-uds=create): a host connection shows as pid 1 uid 0, the agent's own credentials
(measured on runsc 2022). Code in the sandbox has a pid of its own, above 1, and the sandbox uid.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from testkit.agent import load_guest_agent

SANDBOX_UID = 1000


def _agent_module() -> ModuleType:
    return load_guest_agent("sandbox_agent_under_test")


@pytest.fixture(scope="module")
def policy() -> object:
    return _agent_module().PeerPolicy(SANDBOX_UID, host_outside_pid_namespace=True)


@pytest.mark.parametrize(
    ("pid", "uid"),
    [(0, 0), (1, 0)],
    ids=["host-under-runc", "host-under-gvisor"],
)
def test_the_host_is_accepted(policy: object, pid: int, uid: int) -> None:
    assert policy.judge(pid, uid) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("pid", "uid"),
    [(7, SANDBOX_UID), (1, SANDBOX_UID), (0, SANDBOX_UID), (7, 0), (2, 0)],
    ids=["user-code", "sandbox-uid-as-pid-1", "sandbox-uid-as-pid-0", "root-inside", "pid-2"],
)
def test_code_in_the_sandbox_is_refused(policy: object, pid: int, uid: int) -> None:
    assert policy.judge(pid, uid) is not None  # type: ignore[attr-defined]
