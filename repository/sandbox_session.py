"""In-memory session store: the reference implementation of SandboxSessionRepository."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from domain.errors import SessionConflictError
from domain.sandbox import CapScope, SandboxCaps, SandboxSession, SandboxStatus


class InMemorySandboxSessionRepository:
    """Thread-safe dict of records; for tests and single-process use. Nothing survives a restart."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._by_session_id: dict[UUID, SandboxSession] = {}

    def save(self, session: SandboxSession) -> None:
        with self._lock:
            for other in self._by_session_id.values():
                if other.chat_id == session.chat_id and other.session_id != session.session_id:
                    raise SessionConflictError(
                        f"chat {session.chat_id} already has session {other.session_id}"
                    )
            self._by_session_id[session.session_id] = session

    def save_within(self, session: SandboxSession, caps: SandboxCaps) -> CapScope | None:
        with self._lock:
            for cap, scope, owner in (
                (caps.on_node, CapScope.NODE, None),
                (caps.per_owner, CapScope.OWNER, session.owner),
            ):
                if cap is not None and self._count_running(session.node, owner) >= cap:
                    return scope
            # The same lock, taken again (an RLock): no other save comes between.
            self.save(session)
            return None

    def get(self, session_id: UUID) -> SandboxSession | None:
        with self._lock:
            return self._by_session_id.get(session_id)

    def get_many(self, session_ids: Iterable[UUID]) -> list[SandboxSession]:
        with self._lock:
            found = (self._by_session_id.get(session_id) for session_id in set(session_ids))
            return [session for session in found if session is not None]

    def get_active_by_chat_id(self, chat_id: UUID) -> SandboxSession | None:
        with self._lock:
            for session in self._by_session_id.values():
                if session.chat_id == chat_id:
                    return session
            return None

    def list_expired(self, now: datetime) -> list[SandboxSession]:
        with self._lock:
            expired = [s for s in self._by_session_id.values() if s.is_expired(now)]
        return sorted(expired, key=lambda s: s.expires_at)

    def list_sessions(
        self,
        status: SandboxStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        owner: str | None = None,
    ) -> list[SandboxSession]:
        with self._lock:
            matching = [
                s
                for s in self._by_session_id.values()
                if (status is None or s.status is status) and (owner is None or s.owner == owner)
            ]
        matching.sort(key=lambda s: (s.created_at, str(s.session_id)))
        return matching[offset : offset + limit]

    def count_running(self, node: str, owner: str | None = None) -> int:
        with self._lock:
            return self._count_running(node, owner)

    def _count_running(self, node: str, owner: str | None) -> int:
        return sum(
            1
            for s in self._by_session_id.values()
            if s.is_running and s.node == node and (owner is None or s.owner == owner)
        )

    def delete(self, session_id: UUID) -> None:
        with self._lock:
            self._by_session_id.pop(session_id, None)
