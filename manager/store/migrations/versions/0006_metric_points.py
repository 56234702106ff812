"""Metric points: per-interval figures named by workspace / pipeline / version / step.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_point",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("resolution_s", sa.Integer(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("server", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("workspace", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("pipeline", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("step", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_metric_point_lookup",
        "metric_point",
        ["workspace", "pipeline", "name", "ts"],
        unique=False,
    )
    op.create_index(op.f("ix_metric_point_ts"), "metric_point", ["ts"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_metric_point_ts"), table_name="metric_point")
    op.drop_index("ix_metric_point_lookup", table_name="metric_point")
    op.drop_table("metric_point")
