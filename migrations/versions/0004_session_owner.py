"""Sessions record their tenant (the API key that created the chat) and their node (the host
whose runtime runs the sandbox), for ownership checks, per-key and per-host capacity, and
reconciliation of one node's records only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CURRENT = "status IN ('running', 'dead')"


def upgrade() -> None:
    # Records from before have no owner ("") and no node (""): see domain.tenant.Caller.
    op.add_column(
        "sandbox_sessions",
        sa.Column("owner", sa.String(255), nullable=False, server_default=""),
    )
    op.add_column(
        "sandbox_sessions",
        sa.Column("node", sa.String(255), nullable=False, server_default=""),
    )
    # Capacity counts (per node, per node and owner) and a tenant's listing.
    op.create_index(
        "ix_sandbox_sessions_current_node_owner",
        "sandbox_sessions",
        ["node", "owner"],
        postgresql_where=sa.text(CURRENT),
        sqlite_where=sa.text(CURRENT),
    )
    op.create_index(
        "ix_sandbox_sessions_owner_created_at",
        "sandbox_sessions",
        ["owner", "created_at", "session_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_sandbox_sessions_owner_created_at", table_name="sandbox_sessions")
    op.drop_index("ix_sandbox_sessions_current_node_owner", table_name="sandbox_sessions")
    with op.batch_alter_table("sandbox_sessions") as batch:
        batch.drop_column("node")
        batch.drop_column("owner")
