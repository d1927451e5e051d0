"""vm.json rewrites of claimed pool members, done after the claim (no VM is started: the work
directory's files are real, the VM is only its record)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from adapter.qemu.connections import RunningVm
from adapter.qemu.rebinds import MetaRewrites
from adapter.qemu.vm import VmDir, VmMeta, new_vm_id
from domain.sandbox import SandboxSession, SandboxStatus
from testkit.fakes import FakeLogger
from testkit.world import CHAT


def member(tmp_path: Path) -> tuple[RunningVm, SandboxSession]:
    """A member's work directory (vm.json naming its own session as its chat) and the session
    of the chat that claimed it."""
    vm_id, member_id = new_vm_id(), uuid4()
    vm_dir = VmDir(tmp_path / vm_id)
    vm_dir.create(
        VmMeta(vm_id, "test", member_id, member_id), tmp_path, lambda _b, target: target.touch()
    )
    now = datetime.now(UTC)
    claimed = SandboxSession(member_id, CHAT, vm_id, SandboxStatus.RUNNING, now, now)
    return RunningVm(vm_dir), claimed


def named_chat(vm: RunningVm) -> str:
    return str(json.loads(vm.dir.meta_file.read_text())["chat_id"])


def test_the_claiming_chat_is_named_and_close_finishes_the_queue(tmp_path: Path) -> None:
    vm, claimed = member(tmp_path)
    rewrites = MetaRewrites(FakeLogger())
    rewrites.submit(vm, claimed)
    rewrites.close()
    assert named_chat(vm) == str(CHAT)
    assert json.loads(vm.dir.meta_file.read_text())["session_id"] == str(claimed.session_id)


def test_a_vm_being_stopped_is_left_alone(tmp_path: Path) -> None:
    vm, claimed = member(tmp_path)
    placeholder = named_chat(vm)
    rewrites = MetaRewrites(FakeLogger())
    with vm.meta_lock:  # the rewrite waits for the stop that got there first
        rewrites.submit(vm, claimed)
        vm.removed = True
    rewrites.close()
    assert named_chat(vm) == placeholder
    assert sorted(p.name for p in vm.dir.path.iterdir()) == ["overlay.qcow2", "vm.json"]
