"""Tenants: every API key is one, and a chat belongs to the key that created it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    """Who is asking: ``tenant`` is the API key's name; an ``admin`` key sees every chat.

    Every use case that touches a chat takes the caller and checks it (``may_access``), so a
    transport (HTTP, gRPC, a new route) only has to pass who called.
    """

    tenant: str
    admin: bool = False

    def may_access(self, owner: str) -> bool:
        """True for the owner's own chats and for admins. A record without an owner predates
        tenants (migration 0003) or was made by the operator (CLI): every key may reach it, as
        before tenants, until it expires; listings show it to admins only."""
        return self.admin or not owner or owner == self.tenant

    @property
    def listing_owner(self) -> str | None:
        """Whose records a listing shows: None (all) for an admin, else the caller's own."""
        return None if self.admin else self.tenant


# The operator: the CLI, and use cases called without a caller (tests, scripts). Its chats have
# no owner, like those from before tenants.
OPERATOR = Caller("", admin=True)
