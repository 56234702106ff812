"""Data capture: a pipeline's capture rate and the summaries of captured traffic.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("capture_rate", sa.Float(), nullable=False, server_default="0")
        )
    op.create_table(
        "capture_summary",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("pipeline", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("side", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("tensor", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("window_start", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("width_s", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("pooled", sa.JSON(), nullable=False),
        sa.Column("elements", sa.JSON(), nullable=False),
        sa.Column("assay_counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("workspace", "pipeline", "version", "side", "tensor", "window_start"),
    )
    op.create_index(
        "ix_capture_summary_lookup",
        "capture_summary",
        ["workspace", "pipeline", "side", "tensor", "window_start"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_capture_summary_lookup", table_name="capture_summary")
    op.drop_table("capture_summary")
    with op.batch_alter_table("pipeline", schema=None) as batch_op:
        batch_op.drop_column("capture_rate")
