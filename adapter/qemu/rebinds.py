"""Naming a claimed pool member's chat in its vm.json after the claim, not on the claim's path.

vm.json names the chat for whoever reads a work directory; reconciliation does not need it to
keep a claimed member: the member keeps its session id, and a VM whose chat id is still that
session id is looked up by it (usecase/reconcile.py), as Docker members are, whose labels cannot
change at all. So the rewrite (read, write, rename: about 0.7 ms of a new chat's first result on
a loaded host) runs on a thread of its own once the claim is made. A VM stopped before its turn
is skipped: its directory is being removed, and a rewrite must not put a file back into it.
``close`` finishes what is queued.
"""

from __future__ import annotations

import dataclasses
import queue
import threading

from adapter.qemu.connections import RunningVm
from domain.sandbox import SandboxSession
from usecase.ports import Logger

_Job = tuple[RunningVm, SandboxSession] | None


class MetaRewrites:
    """The queue of vm.json rewrites and the thread that does them."""

    def __init__(self, logger: Logger) -> None:
        self._logger = logger
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, vm: RunningVm, session: SandboxSession) -> None:
        """Name ``session``'s chat and session in ``vm``'s vm.json, soon."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sandboxd-qemu-rebind", daemon=True
                )
                self._thread.start()
        self._queue.put((vm, session))

    @staticmethod
    def forget(vm: RunningVm) -> None:
        """The VM is being stopped: no rewrite of it from now on (waits for one under way)."""
        with vm.meta_lock:
            vm.removed = True

    def close(self, timeout_s: float = 5.0) -> None:
        """Do what is queued (for up to ``timeout_s``), then stop the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            vm, session = job
            try:
                rewrite(vm, session)
            except Exception as exc:
                # Reconciliation finds the VM by its session id all the same.
                self._logger.warning(
                    "qemu_rebind_failed",
                    {"container_id": vm.dir.vm_id, "error": type(exc).__name__},
                )


def rewrite(vm: RunningVm, session: SandboxSession) -> None:
    """vm.json names the session and its chat, unless the VM is being stopped."""
    with vm.meta_lock:
        if vm.removed:
            return
        meta = vm.dir.read_meta()
        if meta is None:
            return
        vm.dir.rewrite_meta(
            dataclasses.replace(meta, session_id=session.session_id, chat_id=session.chat_id)
        )
