"""A drift assay's minimum number of values in a window before it is judged (fewer: the
window is ``no_data``): a window at the edge of the traffic holding a handful of values scores
as drift by chance.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assay", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("min_values", sa.Integer(), nullable=False, server_default="100")
        )


def downgrade() -> None:
    with op.batch_alter_table("assay", schema=None) as batch_op:
        batch_op.drop_column("min_values")
