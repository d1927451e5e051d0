"""ReconcileSandboxes: make runtime objects and session records agree again."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.sandbox import ManagedSandbox, SandboxSession, SandboxStatus
from usecase.ports import (
    Logger,
    SandboxLifecycleLocker,
    SandboxRuntime,
    SandboxSessionRepository,
    WarmSandboxSource,
)
from usecase.sandbox import on_node, session_attrs

_PAGE = 500


@dataclass
class ReconcileReport:
    removed_orphans: list[str] = field(default_factory=list)
    marked_dead: list[SandboxSession] = field(default_factory=list)
    failures: int = 0


class ReconcileSandboxes:
    """Run at start-up and on every sweep, so nothing leaks across a crash.

    - A runtime object with no RUNNING record pointing at it is an orphan: it is stopped
      (``sandbox_orphan_removed``). The check happens under the chat's lock, so a sandbox being
      created right now (object made, record not yet saved) is never mistaken for one.
    - A RUNNING record whose object is gone or not running is marked DEAD
      (``sandbox_marked_dead``); the chat's next message replaces it and reports lost state.
    A failure on one item is logged (``sandbox_reconcile_failed``) and the pass goes on.
    - Pooled sandboxes: an idle (or starting, or being claimed) member of this service's warm
      pools is not an orphan. A claimed member keeps the chat label it was created with (its
      own session id), so an object whose chat label matches no record is looked up by its
      session id: the session record, not the label, says which chat it serves. Members of a
      service that is gone (also after kill -9) are owned by no pool and are removed.
    With ``node`` set, only that node's records are judged (and older ones without a node):
    another node's sandboxes are not in this node's runtime, so they would look gone.
    """

    def __init__(
        self,
        repository: SandboxSessionRepository,
        locker: SandboxLifecycleLocker,
        runtime: SandboxRuntime,
        logger: Logger,
        pools: WarmSandboxSource | None = None,
        node: str | None = None,
    ) -> None:
        self._repository = repository
        self._locker = locker
        self._runtime = runtime
        self._logger = logger
        self._pools = pools
        self._node = node

    def execute(self) -> ReconcileReport:
        report = ReconcileReport()
        managed = self._runtime.list_managed()
        for item in managed:
            try:
                if self._remove_if_orphan(item):
                    report.removed_orphans.append(item.container_id)
            except Exception as exc:
                report.failures += 1
                self._log_failure(item.container_id, exc)
        running_ids = {item.container_id for item in managed if item.running}
        for record in self._running_records():
            if record.container_id in running_ids or not on_node(record, self._node):
                continue
            try:
                dead = self._mark_dead_if_gone(record)
            except Exception as exc:
                report.failures += 1
                self._log_failure(record.container_id, exc)
                continue
            if dead is not None:
                report.marked_dead.append(dead)
        return report

    def _log_failure(self, container_id: str, exc: Exception) -> None:
        # One broken object must not stop the pass over all the others.
        self._logger.error(
            "sandbox_reconcile_failed",
            {"container_id": container_id, "error": type(exc).__name__},
        )

    def _remove_if_orphan(self, item: ManagedSandbox) -> bool:
        if item.session_id is not None and item.chat_id is not None and self._is_pooled(item):
            return False
        if item.chat_id is None:
            self._runtime.stop(item.container_id)
        else:
            with self._locker.lock(item.chat_id):
                current = self._repository.get_active_by_chat_id(item.chat_id)
                if (
                    current is not None
                    and current.container_id == item.container_id
                    and current.status is SandboxStatus.RUNNING
                ):
                    return False
                self._runtime.stop(item.container_id)
        self._logger.info(
            "sandbox_orphan_removed",
            {"container_id": item.container_id, "chat_id": str(item.chat_id or "")},
        )
        return True

    def _is_pooled(self, item: ManagedSandbox) -> bool:
        assert item.session_id is not None
        if self._pools is not None and self._pools.owns(item.session_id):
            return True
        if item.chat_id != item.session_id:
            return False  # not created as a pool member
        record = self._repository.get(item.session_id)
        if record is None:
            return False
        with self._locker.lock(record.chat_id):
            current = self._repository.get_active_by_chat_id(record.chat_id)
            return (
                current is not None
                and current.session_id == item.session_id
                and current.container_id == item.container_id
                and current.status is SandboxStatus.RUNNING
            )

    def _mark_dead_if_gone(self, record: SandboxSession) -> SandboxSession | None:
        with self._locker.lock(record.chat_id):
            current = self._repository.get_active_by_chat_id(record.chat_id)
            if (
                current is None
                or current.session_id != record.session_id
                or current.status is not SandboxStatus.RUNNING
                or self._runtime.is_alive(current.container_id)
            ):
                return None
            dead = current.marked_dead()
            self._repository.save(dead)
        self._logger.warning("sandbox_marked_dead", session_attrs(dead))
        return dead

    def _running_records(self) -> list[SandboxSession]:
        records: list[SandboxSession] = []
        while True:
            page = self._repository.list_sessions(
                status=SandboxStatus.RUNNING, limit=_PAGE, offset=len(records)
            )
            records.extend(page)
            if len(page) < _PAGE:
                return records
