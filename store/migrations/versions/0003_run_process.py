"""Crash safety and data at rest: which process writes a run, and whether raw values are kept.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

RUN_COLUMNS: tuple[sa.Column[object], ...] = (
    sa.Column("store_raw", sa.Boolean(), nullable=False, server_default="0"),
    sa.Column("hostname", sa.String(255), nullable=True),
    sa.Column("pid", sa.Integer(), nullable=True),
    sa.Column("process_start", sa.String(40), nullable=True),
    sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
)


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        for column in RUN_COLUMNS:
            runs.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        for column in reversed(RUN_COLUMNS):
            runs.drop_column(column.name)
