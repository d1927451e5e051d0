"""The real ``sandboxd serve`` with SANDBOXD_RUNTIME=qemu, over HTTP: the service-level paths the
Docker e2e suite covers, on microVMs (state per chat, restart and crash recovery, cleanup)."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest
from sandboxd_client import SandboxdClient

from testkit.service import ServiceProcess

pytestmark = pytest.mark.qemu


def _vm_dirs(service: ServiceProcess) -> set[str]:
    return set(service.vm_dirs())


def _qemu_pid(service: ServiceProcess, container_id: str) -> int:
    return int((service.vm_dirs()[container_id] / "qemu.pid").read_text())


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie (a VM whose parent service was killed
    is re-parented, and not every init reaps at once)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _client(service: ServiceProcess) -> SandboxdClient:
    from testkit.service import API_KEY

    return SandboxdClient(service.http_url, api_key=API_KEY, timeout_s=120)


def test_state_per_chat_and_destroy(qemu_service: ServiceProcess) -> None:
    chat, other = uuid.uuid4(), uuid.uuid4()
    with _client(qemu_service) as client:
        first = client.execute(chat, "x = 41\nprint('set')")
        second = client.execute(chat, "print(x + 1)")
        elsewhere = client.execute(other, "print('x' in globals())")
        assert (first.stdout, second.stdout, elsewhere.stdout) == ("set\n", "42\n", "False\n")
        assert second.sandbox.runtime_kind == "qemu"
        assert second.sandbox.container_id.startswith("qvm-")
        assert second.sandbox.session_id == first.sandbox.session_id
        assert _vm_dirs(qemu_service) == {
            first.sandbox.container_id,
            elsewhere.sandbox.container_id,
        }

        client.destroy_sandbox(chat)
        assert client.get_sandbox(chat) is None
        assert _vm_dirs(qemu_service) == {elsewhere.sandbox.container_id}


def test_service_crash_keeps_sessions_and_removes_orphans(qemu_service: ServiceProcess) -> None:
    chat, doomed = uuid.uuid4(), uuid.uuid4()
    with _client(qemu_service) as client:
        before = client.execute(chat, "kept = 'across the crash'")
        orphan = client.execute(doomed, "print(1)").sandbox.container_id
    assert qemu_service.process is not None
    qemu_service.process.send_signal(signal.SIGKILL)
    qemu_service.process.wait()
    # Killed the hard way: the VMs outlive it.
    orphan_pid = _qemu_pid(qemu_service, orphan)
    assert _running(orphan_pid)
    # Forget the second chat's record, as if the crash had come between VM start and commit.
    import sqlite3

    with sqlite3.connect(qemu_service.data_dir / "sandboxd.db") as db:
        deleted = db.execute(
            "DELETE FROM sandbox_sessions WHERE container_id = ?", (orphan,)
        ).rowcount
    assert deleted == 1

    qemu_service.start()
    with _client(qemu_service) as client:
        after = client.execute(chat, "print(kept)")
    assert after.stdout == "across the crash\n"
    assert after.sandbox_replaced is False
    assert after.sandbox.session_id == before.sandbox.session_id
    deadline = time.monotonic() + 30
    while orphan in _vm_dirs(qemu_service) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _vm_dirs(qemu_service) == {before.sandbox.container_id}
    assert not _running(orphan_pid)
    assert '"event": "sandbox_orphan_removed"' in qemu_service.log_text()
