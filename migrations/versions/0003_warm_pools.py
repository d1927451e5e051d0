"""Warm pool definitions, shared by every replica on the database.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "warm_pools",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("language", sa.String(32), nullable=False),
        sa.Column("packages", sa.Text(), nullable=False),
        sa.Column("buffer_min", sa.Integer(), nullable=False),
        sa.Column("buffer_max", sa.Integer(), nullable=False),
        sa.Column("pool_min", sa.Integer(), nullable=False),
        sa.Column("pool_max", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("warm_pools")
