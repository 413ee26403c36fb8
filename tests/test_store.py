"""The store against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from leakmap.core.exchange import Exchange
from leakmap.core.pipeline import FindingRecord, FlowRecord
from leakmap.store import queries
from leakmap.store.db import StoreError, finish_run, open_store, start_run, write_records
from leakmap.store.schema import Finding, Flow, Run
from leakmap.store.writer import FlowWriter


def record(flow_id: str, country: str | None = "CN", findings: int = 1) -> FlowRecord:
    exchange = Exchange(flow_id=flow_id, kind="http", timestamp=1_407_143_702.5,
                        server_ip="123.125.114.144", host="api.account.xiaomi.com",
                        url=f"https://api.account.xiaomi.com/{flow_id}", method="POST",
                        request_body=b"{}")
    return FlowRecord(
        exchange=exchange, geo_scope="public", country=country, city=None, asn=4808,
        as_org="China Unicom", findings=[
            FindingRecord(field=f"request.body.json.f{i}", data_type="imei", category="device_id",
                          severity="high", encoding="plain", match="known",
                          preview="8653•••••••8901", value_hash="ab" * 32)
            for i in range(findings)
        ],
    )


def _head() -> str:
    """The newest migration's revision, from the migration files themselves."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from leakmap.store.db import MIGRATIONS

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None and head >= "0003"
    return head


def test_open_store_migrates_to_head(db_url: str) -> None:
    engine = open_store(db_url)
    with engine.connect() as connection:
        assert connection.execute(text("select version_num from alembic_version")).scalar() == _head()
    open_store(db_url).dispose()  # opening an existing store again is a no-op
    engine.dispose()


def test_run_names_are_unique(db_url: str) -> None:
    engine = open_store(db_url)
    start_run(engine, "bench-1", "run", "0.1.0")
    with pytest.raises(StoreError, match="already exists"):
        start_run(engine, "bench-1", "analyze", "0.1.0")
    engine.dispose()


def test_writer_batches_and_drains_everything_on_close(db_url: str) -> None:
    engine = open_store(db_url)
    run_id = start_run(engine, "writer", "run", "0.1.0", policy_name="default")
    writer = FlowWriter(engine, run_id, interval=0.05, batch_size=100)
    for index in range(1200):
        writer.submit(record(f"flow-{index}", findings=index % 3))
    writer.close()
    finish_run(engine, run_id)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Flow)) == 1200
        assert session.scalar(select(func.count()).select_from(Finding)) == 1200  # 0+1+2 per 3
        run = session.scalars(select(Run)).one()
        assert run.status == "completed" and run.ended_at is not None
    engine.dispose()


def test_rewriting_a_flow_replaces_it(db_url: str) -> None:
    engine = open_store(db_url)
    run_id = start_run(engine, "replace", "run", "0.1.0")
    write_records(engine, run_id, [record("same", findings=2)])
    write_records(engine, run_id, [record("same", findings=1)])
    rows = queries.flows(engine, "replace")
    assert len(rows) == 1 and rows[0]["finding_count"] == 1
    assert len(queries.findings(engine, "replace")) == 1
    # a batch of a stored flow and a new one: the insert is refused, the batch replaces
    write_records(engine, run_id, [record("new", findings=1), record("same", findings=3)])
    counts = {row["flow_id"]: row["finding_count"] for row in queries.flows(engine, "replace")}
    assert counts == {"same": 3, "new": 1}
    found = [f["flow_id"] for f in queries.findings(engine, "replace")]
    assert sorted(found) == ["new", "same", "same", "same"]
    engine.dispose()


def test_a_row_the_database_refuses_is_stored_without_its_findings(db_url: str) -> None:
    """Two findings of one field and type break the findings' unique key: that flow
    is stored alone, without findings and with the reason; the rest of its batch whole."""
    from leakmap.store.db import record_row
    from leakmap.store.writer import write_batch

    engine = open_store(db_url)
    run_id = start_run(engine, "refused", "run", "0.1.0")
    broken = record_row(run_id, record("broken", findings=1))
    broken["findings"] *= 2
    rows = [record_row(run_id, record("before", findings=2)), broken,
            record_row(run_id, record("after", findings=1))]
    assert write_batch(engine, rows) == 3
    stored = {row["flow_id"]: row for row in queries.flows(engine, "refused")}
    assert {key: row["finding_count"] for key, row in stored.items()} == {
        "before": 2, "broken": 0, "after": 1}
    assert "findings not stored" in stored["broken"]["analysis_error"]
    assert sorted(f["flow_id"] for f in queries.findings(engine, "refused")) == [
        "after", "before", "before"]
    engine.dispose()


def test_report_rows_filter_by_run_and_country(db_url: str) -> None:
    engine = open_store(db_url)
    first = start_run(engine, "a", "analyze", "0.1.0")
    second = start_run(engine, "b", "analyze", "0.1.0")
    write_records(engine, first, [record("1", "CN"), record("2", "SG")])
    write_records(engine, second, [record("3", "CN", findings=0)])
    assert {f["flow_id"] for f in queries.findings(engine, "a", ["cn"])} == {"1"}
    assert {f["flow_id"] for f in queries.flows(engine, None, ["CN"])} == {"1", "3"}
    row = queries.findings(engine, "a", ["SG"])[0]
    assert row["timestamp"] == "2014-08-04T09:15:02.500000Z"
    assert row["run"] == "a" and row["server_ip"] == "123.125.114.144"
    engine.dispose()


def test_two_writers_with_their_own_runs_lose_nothing(db_url: str) -> None:
    engines = [open_store(db_url), open_store(db_url)]
    runs = [start_run(engine, f"proxy-{i}", "run", "0.1.0") for i, engine in enumerate(engines)]
    writers = [FlowWriter(e, r, interval=0.02, batch_size=50) for e, r in zip(engines, runs,
                                                                              strict=True)]

    def feed(index: int) -> None:
        for n in range(500):
            writers[index].submit(record(f"p{index}-{n}"))

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in writers:
        writer.close()
    assert len(queries.flows(engines[0], "proxy-0")) == 500
    assert len(queries.flows(engines[0], "proxy-1")) == 500
    for engine in engines:
        engine.dispose()


def test_unreachable_database_is_one_clear_error() -> None:
    with pytest.raises(StoreError) as caught:
        open_store("postgresql+psycopg://leakmap:secret@127.0.0.1:1/nowhere")
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "secret" not in message and "\n" not in message


def test_a_url_that_is_no_url_is_one_clear_error() -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        open_store("not a url")


def test_migrations_build_exactly_the_schema_the_models_declare(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from leakmap.store.schema import Base

    engine = open_store(db_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_hostile_values_are_stored_not_refused(db_url: str) -> None:
    engine = open_store(db_url)
    run_id = start_run(engine, "hostile", "run", "0.1.0")
    nasty = record("nasty", findings=1)
    nasty.exchange.method = "X" * 100
    nasty.exchange.http_version = "HTTP/9" * 10
    nasty.exchange.url = "https://a/\x00\ud800<script>"
    nasty.exchange.status_code = 10**12
    nasty.findings = [FindingRecord(field="request.body.json." + "k" * 5000, data_type="imei",
                                    category="device_id", severity="high", encoding="plain",
                                    match="pattern", preview="8653•••", value_hash="0" * 64)]
    writer = FlowWriter(engine, run_id, interval=0.05)
    for item in (record("before"), nasty, record("after")):
        writer.submit(item)
    assert writer.close() == 0
    flows = {f["flow_id"]: f for f in queries.flows(engine, "hostile")}
    assert set(flows) == {"before", "nasty", "after"}
    assert flows["nasty"]["status_code"] is None and "<script>" in flows["nasty"]["url"]
    assert flows["nasty"]["finding_count"] == 1
    fields = [f["field"] for f in queries.findings(engine, "hostile") if f["flow_id"] == "nasty"]
    assert len(fields) == 1 and len(fields[0]) <= 1000
    engine.dispose()


def test_a_database_from_before_destinations_upgrades_with_its_flows(db_url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from leakmap.store.db import MIGRATIONS

    old = create_engine(db_url)
    with old.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(text(
            "INSERT INTO runs (id, name, command, status, started_at, tool_version) "
            "VALUES (7, 'old', 'analyze', 'completed', '2026-11-01 10:00:00', '0.1.0')"))
        connection.execute(text(
            "INSERT INTO flows (run_id, flow_id, kind, timestamp, server_ip, geo_scope, country, "
            "finding_count, truncated) VALUES (7, 'f1', 'http', '2026-11-01 10:00:01', "
            "'13.228.0.1', 'public', 'SG', 1, false)"))
        connection.execute(text(
            "INSERT INTO findings (flow_pk, data_type, category, severity, field, encoding, match, "
            "preview, value_hash) SELECT id, 'imei', 'device_id', 'high', 'request.body.json.imei', "
            "'plain', 'known', '8653•••••••8901', 'ab' FROM flows WHERE flow_id = 'f1'"))
    old.dispose()
    engine = open_store(db_url)
    (flow,) = queries.flows(engine, "old")
    assert (flow["country"], flow["geo_ip"], flow["geo_ip_source"]) == ("SG", "13.228.0.1", "server")
    assert (flow["watched"], flow["operator"], flow["watch_reason"]) == (False, None, None)
    assert flow["destination"] == "server in SG, operator unknown"
    (finding,) = queries.findings(engine, "old")  # no migration step lost a child row
    assert finding["data_type"] == "imei" and finding["country"] == "SG"
    engine.dispose()


def test_runs_of_dead_processes_are_marked_aborted(db_url: str) -> None:
    from datetime import timedelta

    from leakmap.store.db import mark_abandoned_runs, utcnow

    engine = open_store(db_url)
    gone = start_run(engine, "gone", "run", "0.1.0")
    alive = start_run(engine, "alive", "run", "0.1.0")
    remote = start_run(engine, "remote", "run", "0.1.0")
    quiet = start_run(engine, "quiet-remote", "run", "0.1.0")
    with Session(engine) as session, session.begin():
        session.get(Run, gone).pid = 2**22 + 7  # above Linux's pid_max default: never a process
        session.get(Run, remote).hostname = "another-machine"
        session.get(Run, quiet).hostname = "another-machine"
        session.get(Run, quiet).heartbeat_at = utcnow() - timedelta(hours=1)
    assert sorted(mark_abandoned_runs(engine)) == ["gone", "quiet-remote"]
    status = {r["run"]: r["status"] for r in queries.runs(engine)}
    assert status == {"gone": "aborted", "alive": "running", "remote": "running",
                      "quiet-remote": "aborted"}
    assert mark_abandoned_runs(engine) == []  # nothing twice
    finish_run(engine, alive)
    engine.dispose()
