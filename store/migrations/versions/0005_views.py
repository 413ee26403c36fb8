"""Views for people who browse the database with SQLite tools, Datasette or psql.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_FINDING_ROWS = """
    SELECT r.name AS run, f.timestamp, f.flow_id, f.host, f.server_ip, f.country, f.city,
           f.asn, f.as_org, f.operator, f.operator_country, f.watch_reason,
           f.action AS flow_action, f.action_rule, f.enforced,
           fi.data_type, fi.category, fi.severity, fi.field, fi.encoding, fi.match,
           fi.preview, fi.value_hash, fi.action
    FROM findings fi
    JOIN flows f ON fi.flow_pk = f.id
    JOIN runs r ON f.run_id = r.id
"""

# CASE WHEN f.watched: a boolean in PostgreSQL, 0/1 in SQLite; both read it as a condition
VIEWS = {
    "findings_watched": _FINDING_ROWS + "    WHERE f.watched",
    "transfers_by_country": """
    SELECT r.name AS run, COALESCE(f.country, '??') AS country, fi.data_type,
           COUNT(*) AS findings, COUNT(DISTINCT f.id) AS flows,
           MAX(CASE WHEN f.watched THEN 1 ELSE 0 END) AS watched,
           MIN(f.timestamp) AS first_seen, MAX(f.timestamp) AS last_seen
    FROM findings fi
    JOIN flows f ON fi.flow_pk = f.id
    JOIN runs r ON f.run_id = r.id
    GROUP BY r.name, COALESCE(f.country, '??'), fi.data_type
""",
    "destinations": """
    SELECT r.name AS run, f.host, f.server_ip, f.country, f.city, f.asn, f.as_org,
           f.operator, f.operator_country,
           MAX(CASE WHEN f.watched THEN 1 ELSE 0 END) AS watched,
           COUNT(*) AS flows, SUM(f.finding_count) AS findings,
           SUM(CASE WHEN f.action = 'block' THEN 1 ELSE 0 END) AS blocked,
           MIN(f.timestamp) AS first_seen, MAX(f.timestamp) AS last_seen
    FROM flows f
    JOIN runs r ON f.run_id = r.id
    GROUP BY r.name, f.host, f.server_ip, f.country, f.city, f.asn, f.as_org, f.operator,
             f.operator_country
""",
}


def upgrade() -> None:
    for name, query in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW {name}")
