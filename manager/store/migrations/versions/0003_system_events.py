"""System events: restarts, recoveries and repairs made by the supervisor and reconciler.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "system_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("component", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("message", sqlmodel.sql.sqltypes.AutoString(length=4096), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("system_event", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_system_event_ts"), ["ts"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("system_event", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_system_event_ts"))
    op.drop_table("system_event")
