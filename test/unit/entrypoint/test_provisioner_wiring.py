"""The composition root wires one SandboxProvisioner: creating a sandbox by execution, by PUT or
by upload goes through the same pools, caps and environments."""

from __future__ import annotations

from testkit.container import make_container
from testkit.fakes import FakeRuntime


def test_every_use_case_that_gives_a_chat_its_sandbox_shares_the_one_provisioner() -> None:
    container = make_container(FakeRuntime())
    provisioner = container.provisioner()
    assert container.create_sandbox()._provisioner is provisioner
    assert container.execute_code()._provisioner is provisioner
    assert container.workspace_files()._provisioner is provisioner
