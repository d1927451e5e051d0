"""Session table: one current record per chat, and the expiry index.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

CURRENT = "status IN ('running', 'dead')"


def upgrade() -> None:
    op.create_table(
        "sandbox_sessions",
        sa.Column("session_id", sa.Uuid(), primary_key=True),
        sa.Column("chat_id", sa.Uuid(), nullable=False),
        sa.Column("runtime_kind", sa.String(32), nullable=False),
        sa.Column("container_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_activity_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(CURRENT, name="ck_sandbox_sessions_status"),
    )
    # Partial, so that only current records compete for a chat (see the repository module).
    op.create_index(
        "uq_sandbox_sessions_current_chat",
        "sandbox_sessions",
        ["chat_id"],
        unique=True,
        postgresql_where=sa.text(CURRENT),
        sqlite_where=sa.text(CURRENT),
    )
    op.create_index(
        "ix_sandbox_sessions_current_expires_at",
        "sandbox_sessions",
        ["expires_at", "session_id"],
        postgresql_where=sa.text(CURRENT),
        sqlite_where=sa.text(CURRENT),
    )
    op.create_index(
        "ix_sandbox_sessions_created_at", "sandbox_sessions", ["created_at", "session_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_sandbox_sessions_created_at", table_name="sandbox_sessions")
    op.drop_index("ix_sandbox_sessions_current_expires_at", table_name="sandbox_sessions")
    op.drop_index("uq_sandbox_sessions_current_chat", table_name="sandbox_sessions")
    op.drop_table("sandbox_sessions")
