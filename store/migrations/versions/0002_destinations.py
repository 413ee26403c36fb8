"""Destinations: operator, jurisdiction, watched flag; the geodb a run used.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FLOW_COLUMNS: tuple[sa.Column[object], ...] = (
    sa.Column("geo_ip", sa.String(64), nullable=True),
    sa.Column("geo_ip_source", sa.String(8), nullable=True),
    sa.Column("domain", sa.Text(), nullable=True),
    sa.Column("operator", sa.String(200), nullable=True),
    sa.Column("operator_country", sa.String(2), nullable=True),
    sa.Column("attribution", sa.String(16), nullable=True),
    sa.Column("watched", sa.Boolean(), nullable=False, server_default="0"),
    sa.Column("watch_reason", sa.Text(), nullable=True),
)


def upgrade() -> None:
    with op.batch_alter_table("runs") as runs:
        runs.add_column(sa.Column("geodb", sa.Text(), nullable=True))
    with op.batch_alter_table("flows") as flows:
        for column in FLOW_COLUMNS:
            flows.add_column(column)
        flows.create_index("ix_flows_operator_country", ["operator_country"])
        flows.create_index("ix_flows_watched", ["watched"])
    # flows stored before this revision: their server address is what was located
    op.execute("UPDATE flows SET geo_ip = server_ip, geo_ip_source = 'server' "
               "WHERE server_ip IS NOT NULL AND geo_scope IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("flows") as flows:
        flows.drop_index("ix_flows_watched")
        flows.drop_index("ix_flows_operator_country")
        for column in reversed(FLOW_COLUMNS):
            flows.drop_column(column.name)
    with op.batch_alter_table("runs") as runs:
        runs.drop_column("geodb")
