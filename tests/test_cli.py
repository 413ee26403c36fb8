"""The ``leakmap`` command as a user runs it: offline analysis, reports, clean errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from conftest import SAMPLES, leakmap_cli

HAR = SAMPLES / "redmi-2014.har"
DEVICE = SAMPLES / "redmi-1s.yaml"
FINDING_KEYS = {"flow_id", "run", "timestamp", "host", "url", "server_ip", "country",
                "data_type", "field", "encoding", "match", "severity"}
FLOW_KEYS = {"flow_id", "run", "timestamp", "host", "url", "server_ip", "country",
             "finding_count"}


@pytest.fixture
def analysed(tmp_path: Path) -> str:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    leakmap_cli("analyze", str(HAR), "--device", str(DEVICE), "--db", db, "--run-name", "s1")
    return db


def test_json_report_of_the_2014_sample(analysed: str) -> None:
    report = json.loads(leakmap_cli("report", "--db", analysed, "--format", "json").stdout)
    assert len(report["flows"]) == 6
    for finding in report["findings"]:
        assert finding.keys() >= FINDING_KEYS
    for flow in report["flows"]:
        assert flow.keys() >= FLOW_KEYS
    beijing = {(f["data_type"], f["match"]) for f in report["findings"] if f["country"] == "CN"}
    assert {("imei", "known"), ("phone_number", "known"), ("carrier", "known"),
            ("contact", "known")} <= beijing
    # the decoys: a Luhn-invalid serial and a stranger's number are never the device's
    known_values = {f["field"] for f in report["findings"] if f["match"] == "known"}
    assert "request.body.json.serial" not in known_values
    assert "request.body.json.contact" not in known_values
    assert not any(f["field"] == "request.body.json.serial" for f in report["findings"])
    truncated = next(f for f in report["flows"] if f["url"].endswith("/log"))
    assert "malformed JSON" in truncated["analysis_error"]
    assert {f["country"] for f in report["flows"]} == {"CN", "SG", "US"}


def test_country_filter_csv_and_table(analysed: str) -> None:
    rows = list(csv.DictReader(io.StringIO(
        leakmap_cli("report", "--db", analysed, "--country", "SG", "--format", "csv").stdout)))
    assert rows and {row["country"] for row in rows} == {"SG"}
    assert set(rows[0]) >= FINDING_KEYS
    table = leakmap_cli("report", "--db", analysed, "--run", "s1").stdout
    assert "api.account.xiaomi.com" in table and "8653•••••••8901" in table
    assert "865312345678901" not in table


def test_analysis_is_deterministic(tmp_path: Path) -> None:
    dumps = []
    for attempt in range(2):
        db = f"sqlite:///{tmp_path / f'det{attempt}.db'}"
        leakmap_cli("analyze", str(HAR), "--device", str(DEVICE), "--db", db,
                    "--run-name", "same", "--hash-key-file", str(tmp_path / "key"))
        dumps.append(leakmap_cli("report", "--db", db, "--format", "json").stdout)
    assert dumps[0] == dumps[1]


def _fails_cleanly(*args: str) -> str:
    result = leakmap_cli(*args, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_policy_typo_is_one_line_with_file_line_and_column(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("data_types:\n  imei:\n    category: device_id\n    severty: high\n")
    line = _fails_cleanly("analyze", str(HAR), "--policy", str(policy),
                          "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert f"{policy}:4:5: unknown key 'severty'" in line
    assert "did you mean 'severity'" in line


def test_missing_device_file_and_bad_database_are_one_line(tmp_path: Path) -> None:
    line = _fails_cleanly("analyze", str(HAR), "--device", str(tmp_path / "none.yaml"))
    assert "none.yaml" in line and "not found" in line
    line = _fails_cleanly("report", "--db", "postgresql+psycopg://u:pw@127.0.0.1:1/x")
    assert "127.0.0.1:1" in line and "pw" not in line


def test_run_refuses_bad_settings_before_starting_the_proxy(tmp_path: Path) -> None:
    policy = tmp_path / "broken.yaml"
    policy.write_text("data_types: [\n")
    line = _fails_cleanly("run", "--policy", str(policy), "--listen-port", "1")
    assert str(policy) in line and "YAML syntax error" in line


def test_duplicate_run_name_is_refused(analysed: str) -> None:
    line = _fails_cleanly("analyze", str(HAR), "--db", analysed, "--run-name", "s1")
    assert "already exists" in line


def test_every_command_has_help_with_an_example() -> None:
    commands = ["run", "analyze", "report", "runs", "addon-path"]
    for command in commands:
        help_text = leakmap_cli(command, "--help").stdout
        assert "Example:" in help_text, command
    run_help = leakmap_cli("run", "--help").stdout
    for flag in ("--mode", "--listen-port", "--policy", "--device", "--db", "--run-name",
                 "--geoip-dir", "--networks", "--store-raw"):
        assert flag in run_help


def test_addon_path_is_the_installed_script_alone_in_its_folder() -> None:
    path = Path(leakmap_cli("addon-path").stdout.strip())
    assert path.name == "leakmap_addons.py" and path.exists()
    siblings = {p.name for p in path.parent.iterdir() if p.suffix == ".py"}
    assert siblings <= {"leakmap_addons.py", "__init__.py"}


def test_plain_mitmdump_with_a_bad_policy_says_one_line_and_exits(tmp_path: Path) -> None:
    import subprocess

    from conftest import BIN
    from servers import free_port

    policy = tmp_path / "p.yaml"
    policy.write_text("data_types:\n  imei: {category: device_id, severty: high}\n")
    script = leakmap_cli("addon-path").stdout.strip()
    result = subprocess.run(
        [str(BIN / "mitmdump"), "-s", script, "--set", f"leakmap_policy={policy}",
         "--listen-port", str(free_port()), "--set", f"confdir={tmp_path / 'conf'}"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{policy}:2:31: unknown key 'severty'" in result.stdout + result.stderr


def test_malformed_har_entries_are_logged_not_fatal(tmp_path: Path) -> None:
    entries = [
        {"request": "x"},
        [1],
        {"request": {"url": "https://a/\ud800x", "postData": "zz"}, "startedDateTime": "nope",
         "response": {"content": [1], "status": 200}, "_webSocketMessages": 5},
        {"startedDateTime": "2014-08-04T09:15:02Z", "serverIPAddress": "123.125.114.144",
         "request": {"method": "GET", "url": "https://[::1/x?imei=865312345678901"},
         "response": {"status": 200}},
    ]
    har = tmp_path / "bad.har"
    har.write_text(json.dumps({"log": {"entries": entries}}))
    db = f"sqlite:///{tmp_path / 'bad.db'}"
    leakmap_cli("analyze", str(har), "--device", str(DEVICE), "--db", db)
    flows = json.loads(leakmap_cli("report", "--db", db, "--format", "json").stdout)["flows"]
    assert len(flows) == 4
    errors = " | ".join(str(f["flow_error"]) for f in flows)
    assert "entry 1 unreadable" in errors and "'nope' is not a time" in errors
    assert [f["finding_count"] for f in flows if f["timestamp"].startswith("2014")] == [1]


def test_a_json_list_is_not_mistaken_for_a_flow_file(tmp_path: Path) -> None:
    listed = tmp_path / "list.har"
    listed.write_text("[1, 2]")
    line = _fails_cleanly("analyze", str(listed), "--db", f"sqlite:///{tmp_path / 'x.db'}")
    assert "not a HAR 1.2 file" in line


def test_report_refuses_a_country_that_is_no_code(analysed: str) -> None:
    result = leakmap_cli("report", "--db", analysed, "--country", "China", check=False)
    assert result.returncode != 0 and "ISO 3166 alpha-2" in result.stderr


def test_a_flow_file_cut_short_keeps_the_flows_before_the_cut(tmp_path: Path) -> None:
    from mitmproxy import io as mitm_io
    from mitmproxy.test import tflow

    capture = tmp_path / "cut.flow"
    with capture.open("wb") as handle:
        writer = mitm_io.FlowWriter(handle)
        for index in range(5):
            flow = tflow.tflow(resp=True)
            flow.request.path = f"/r{index}?imei=865312345678901"
            writer.add(flow)
    capture.write_bytes(capture.read_bytes()[:-20])  # the proxy died mid-write
    db = f"sqlite:///{tmp_path / 'cut.db'}"
    result = leakmap_cli("analyze", str(capture), "--device", str(DEVICE), "--db", db,
                         "--run-name", "cut", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith("(the 4 flows before the damage are stored)")
    report = json.loads(leakmap_cli("report", "--db", db, "--format", "json").stdout)
    assert len(report["flows"]) == 4
    assert {f["data_type"] for f in report["findings"]} == {"imei"}
    runs = leakmap_cli("runs", "--db", db).stdout
    assert "incomplete" in runs
