"""Policies that act: each flow's action, the rule behind it, and the policy that judged it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FLOW_COLUMNS: tuple[sa.Column[object], ...] = (
    sa.Column("policy_sha256", sa.String(64), nullable=True),
    sa.Column("action", sa.String(16), nullable=False, server_default="log"),
    sa.Column("action_rule", sa.Text(), nullable=True),
    sa.Column("enforced", sa.Boolean(), nullable=False, server_default="0"),
)


def upgrade() -> None:
    with op.batch_alter_table("flows") as flows:
        for column in FLOW_COLUMNS:
            flows.add_column(column)
        flows.create_index("ix_flows_action", ["action"])
    with op.batch_alter_table("findings") as findings:
        findings.add_column(sa.Column("action", sa.String(16), nullable=False, server_default="log"))
    # flows stored before this revision were judged by their run's policy
    op.execute("UPDATE flows SET policy_sha256 = (SELECT runs.policy_sha256 FROM runs "
               "WHERE runs.id = flows.run_id)")


def downgrade() -> None:
    with op.batch_alter_table("findings") as findings:
        findings.drop_column("action")
    with op.batch_alter_table("flows") as flows:
        flows.drop_index("ix_flows_action")
        for column in reversed(FLOW_COLUMNS):
            flows.drop_column(column.name)
