"""devices' poll plan and readings per collection window (the overview's collection rate)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 04:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reading_interval_s", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("collect_window", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("collect_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("collect_previous", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("collect_previous")
        batch_op.drop_column("collect_count")
        batch_op.drop_column("collect_window")
        batch_op.drop_column("reading_interval_s")
