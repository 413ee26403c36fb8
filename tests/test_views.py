"""The database as SQLite tools, Datasette or psql see it: views, and ``leakmap runs``."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, text

from leakmap.policies.model import default_policy_path

from conftest import SAMPLES, leakmap_cli

STRICT = default_policy_path().parent / "strict-defence.yaml"


def _analyse(db_url: str) -> None:
    leakmap_cli("analyze", str(SAMPLES / "redmi-2014.har"), "--device", str(SAMPLES / "redmi-1s.yaml"),
                "--policy", str(STRICT), "--db", db_url, "--run-name", "views")


def test_views_answer_the_reviewers_questions(db_url: str) -> None:
    _analyse(db_url)
    engine = create_engine(db_url)
    with engine.connect() as connection:
        watched = connection.execute(text(
            "SELECT host, country, operator, data_type, field, flow_action FROM findings_watched "
            "WHERE run = 'views'")).all()
        by_country = {(row.country, row.data_type): row for row in connection.execute(text(
            "SELECT * FROM transfers_by_country WHERE run = 'views'"))}
        places = {row.host: row for row in connection.execute(text(
            "SELECT * FROM destinations WHERE run = 'views'"))}
    engine.dispose()
    assert {row.host for row in watched} == {"api.account.xiaomi.com", "sg-api.account.xiaomi.com"}
    assert all(row.operator == "Xiaomi" and row.flow_action == "block" for row in watched)
    assert ("CN", "imei") in by_country and by_country[("CN", "imei")].watched == 1
    assert by_country[("CN", "contact")].findings == 3 and by_country[("CN", "contact")].flows == 2
    assert places["api.account.xiaomi.com"].blocked == 3 and places["www.google.com"].watched == 0


def test_runs_lists_counts(db_url: str) -> None:
    _analyse(db_url)
    [run] = json.loads(leakmap_cli("runs", "--db", db_url, "--format", "json").stdout)
    assert (run["run"], run["flows"], run["flagged"], run["findings"], run["watched"],
            run["blocked"], run["redacted"]) == ("views", 6, 4, 10, 5, 4, 0)
    assert run["captures"][0]["sha256"] and run["policy"] == "strict-defence"
    table = leakmap_cli("runs", "--db", db_url).stdout
    assert "flagged" in table and "views" in table
