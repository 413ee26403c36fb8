"""Initial schema: runs, flows, findings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("command", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("tool_version", sa.String(40), nullable=False),
        sa.Column("policy_name", sa.String(200), nullable=True),
        sa.Column("policy_sha256", sa.String(64), nullable=True),
        sa.Column("device_sha256", sa.String(64), nullable=True),
        sa.Column("mode", sa.String(100), nullable=True),
        sa.Column("captures", sa.Text(), nullable=True),
    )
    op.create_table(
        "flows",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("flow_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=False),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("client_port", sa.Integer(), nullable=True),
        sa.Column("server_ip", sa.String(64), nullable=True),
        sa.Column("server_port", sa.Integer(), nullable=True),
        sa.Column("sni", sa.Text(), nullable=True),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("scheme", sa.String(16), nullable=True),
        sa.Column("method", sa.String(32), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("http_version", sa.String(16), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("request_size", sa.BigInteger(), nullable=True),
        sa.Column("response_size", sa.BigInteger(), nullable=True),
        sa.Column("geo_scope", sa.String(16), nullable=True),
        sa.Column("country", sa.String(2), nullable=True),
        sa.Column("city", sa.Text(), nullable=True),
        sa.Column("asn", sa.BigInteger(), nullable=True),
        sa.Column("as_org", sa.Text(), nullable=True),
        sa.Column("finding_count", sa.Integer(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("flow_error", sa.Text(), nullable=True),
        sa.Column("analysis_error", sa.Text(), nullable=True),
        sa.UniqueConstraint("run_id", "flow_id", name="uq_flows_run_flow"),
    )
    op.create_index("ix_flows_run_id", "flows", ["run_id"])
    op.create_index("ix_flows_country", "flows", ["country"])
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("flow_pk", sa.Integer(), sa.ForeignKey("flows.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("data_type", sa.String(64), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("field", sa.Text(), nullable=False),
        sa.Column("encoding", sa.String(100), nullable=False),
        sa.Column("match", sa.String(16), nullable=False),
        sa.Column("preview", sa.Text(), nullable=False),
        sa.Column("value_hash", sa.String(64), nullable=False),
        sa.Column("raw_value", sa.Text(), nullable=True),
        sa.UniqueConstraint("flow_pk", "field", "data_type", name="uq_findings_flow_field_type"),
    )
    op.create_index("ix_findings_flow_pk", "findings", ["flow_pk"])
    op.create_index("ix_findings_data_type", "findings", ["data_type"])


def downgrade() -> None:
    op.drop_table("findings")
    op.drop_table("flows")
    op.drop_table("runs")
