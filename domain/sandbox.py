"""The sandbox session: which runtime object serves which chat, and until when."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from domain.errors import InvalidChatIdError


class SandboxStatus(StrEnum):
    """Lifecycle state of a session record.

    RUNNING: the runtime object exists (as far as we know) and serves the chat.
    DEAD: the runtime object vanished underneath us (killed from outside, crashed, host restart).
      Reconciliation marks such records; the record stays as the chat's current session so that
      the chat's next message replaces it and tells the caller that its state was lost.

    There is no STOPPED state: destroying or cleaning a session deletes its record, and the
    structured log keeps the history.
    """

    RUNNING = "running"
    DEAD = "dead"


@dataclass(frozen=True)
class SandboxSession:
    """One chat's sandbox.

    ``container_id`` is the runtime's own id of the object (a Docker container id, a microVM id).
    ``expires_at`` is the sliding idle deadline; ``max_expires_at`` caps it (None: no cap).
    ``last_activity_at`` is when code last ran in it (None: never yet).
    ``packages`` are the extra packages the sandbox has, in ``domain.environment``'s recorded
    form (Python requirements as they are, npm ones prefixed ``npm:``), so that a replacement
    starts from the cached environment that already has them.
    ``owner`` is the tenant (API key name) that created the chat ("" before tenants existed);
    ``node`` the host whose runtime runs the sandbox ("" before nodes were recorded).
    """

    session_id: UUID
    chat_id: UUID
    container_id: str
    status: SandboxStatus
    created_at: datetime
    expires_at: datetime
    runtime_kind: str = ""
    last_activity_at: datetime | None = None
    max_expires_at: datetime | None = None
    packages: tuple[str, ...] = ()
    owner: str = ""
    node: str = ""

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at <= now

    @property
    def is_running(self) -> bool:
        return self.status is SandboxStatus.RUNNING

    def is_usable(self, now: datetime) -> bool:
        """True when code can run in it now: running and not expired."""
        return self.is_running and not self.is_expired(now)

    def renewed(self, now: datetime, ttl: timedelta) -> SandboxSession:
        """Slide the idle deadline to now + ttl, never past the absolute maximum lifetime."""
        return replace(
            self,
            expires_at=capped_deadline(now + ttl, self.max_expires_at),
            last_activity_at=now,
        )

    def marked_dead(self) -> SandboxSession:
        return replace(self, status=SandboxStatus.DEAD)


def capped_deadline(deadline: datetime, cap: datetime | None) -> datetime:
    return deadline if cap is None or deadline <= cap else cap


@dataclass(frozen=True)
class SandboxCaps:
    """How many RUNNING sandboxes a node may hold, and one owner (tenant) on it (None: no cap).

    A new chat's record is saved only while both have room (``SandboxSessionRepository.
    save_within``): the check and the insert are one step for every replica sharing the store.
    """

    on_node: int | None = None
    per_owner: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.on_node is None and self.per_owner is None


class CapScope(StrEnum):
    """Which cap a refused new record would have passed."""

    NODE = "node"
    OWNER = "owner"


@dataclass(frozen=True)
class ManagedSandbox:
    """A runtime object as the runtime lists it for reconciliation, read from its labels."""

    container_id: str
    session_id: UUID | None
    chat_id: UUID | None
    running: bool = True


def parse_chat_id(value: str | UUID) -> UUID:
    """Accept any UUID spelling (hyphens or not, any case); raise InvalidChatIdError otherwise."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value.strip())
    except (ValueError, AttributeError) as exc:
        raise InvalidChatIdError(f"chat id {value!r} is not a UUID") from exc
