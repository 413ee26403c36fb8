"""Destinations through the commands a user runs: analyze, report --watched, geo lookup, geodb info.

Captures are written here as real HAR and mitmproxy flow files; the
databases are the embedded ones and MaxMind's test databases.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from mitmproxy import dns, io
from mitmproxy.test import tflow

from conftest import leakmap_cli

MAXMIND = Path(__file__).parent / "data" / "maxmind"

# host, serverIPAddress (None: left out), expected (country, operator, operator_country, watched)
HAR_CASES = [
    ("api.account.xiaomi.com", "123.125.114.144", ("CN", "Xiaomi", "CN", True)),   # Beijing
    ("sg-api.account.xiaomi.com", "13.228.0.1", ("SG", "Xiaomi", "CN", True)),    # AWS Singapore
    ("www.google.com", "142.250.183.14", ("US", "Google", "US", False)),
    ("lab.printer.example", "192.168.1.7", (None, None, None, False)),            # private
    ("api.unlisted-shop.example", "13.228.0.2", ("SG", None, None, False)),        # cloud, unlisted
    ("tracking.miui.com", None, (None, "Xiaomi", "CN", True)),                     # no address
]


def _entry(host: str, ip: str | None) -> dict:
    entry = {
        "startedDateTime": "2026-10-01T10:00:00.000Z",
        "time": 10,
        "request": {"method": "GET", "url": f"https://{host}/ping", "httpVersion": "HTTP/1.1",
                    "headers": [{"name": "Host", "value": host}], "queryString": [],
                    "cookies": [], "headersSize": -1, "bodySize": 0},
        "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "headers": [],
                     "cookies": [], "content": {"size": 0, "mimeType": "text/plain"},
                     "redirectURL": "", "headersSize": -1, "bodySize": 0},
        "cache": {}, "timings": {"send": 1, "wait": 1, "receive": 1},
    }
    if ip is not None:
        entry["serverIPAddress"] = ip
    return entry


@pytest.fixture
def har(tmp_path: Path) -> Path:
    path = tmp_path / "destinations.har"
    entries = [_entry(host, ip) for host, ip, _ in HAR_CASES]
    path.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"},
                                        "entries": entries}}), encoding="utf-8")
    return path


def _report(db: str, *extra: str) -> dict:
    return json.loads(leakmap_cli("report", "--db", db, "--format", "json", *extra).stdout)


def test_analyze_records_server_and_operator_for_each_flow(tmp_path: Path, har: Path) -> None:
    db = f"sqlite:///{tmp_path / 'd.db'}"
    leakmap_cli("analyze", str(har), "--db", db, "--run-name", "dest")
    flows = {f["host"]: f for f in _report(db)["flows"]}
    for host, _ip, (country, operator, operator_country, watched) in HAR_CASES:
        flow = flows[host]
        assert (flow["country"], flow["operator"], flow["operator_country"], flow["watched"]) == (
            country, operator, operator_country, watched), host
    assert flows["sg-api.account.xiaomi.com"]["destination"] == (
        "server in SG (AS16509 Amazon.com, Inc.), operated by Xiaomi (CN)")
    assert flows["sg-api.account.xiaomi.com"]["watch_reason"] == "operator_country=CN"
    assert flows["api.account.xiaomi.com"]["watch_reason"] == "server_country=CN, operator_country=CN"
    assert flows["api.account.xiaomi.com"]["attribution"] == "domain"
    assert flows["api.account.xiaomi.com"]["domain"] == "xiaomi.com"
    assert flows["lab.printer.example"]["geo_scope"] == "private"
    assert flows["tracking.miui.com"]["geo_scope"] == "unknown"  # no live DNS lookup offline
    assert flows["api.unlisted-shop.example"]["asn"] == 16509  # hosted by Amazon, not operated


def test_report_watched_lists_exactly_the_watched_flows(tmp_path: Path, har: Path) -> None:
    db = f"sqlite:///{tmp_path / 'd.db'}"
    leakmap_cli("analyze", str(har), "--db", db, "--run-name", "dest")
    watched = _report(db, "--watched")
    expected = {host for host, _ip, result in HAR_CASES if result[3]}
    assert {f["host"] for f in watched["flows"]} == expected
    assert all(f["watched"] and f["watch_reason"] for f in watched["flows"])
    table = leakmap_cli("report", "--db", db).stdout.splitlines()
    assert "3 flows to watched destinations" in table[0]
    assert ("WATCHED no findings -> sg-api.account.xiaomi.com: server in SG (AS16509 Amazon.com, "
            "Inc.), operated by Xiaomi (CN) [operator_country=CN]") in table
    assert sum(line.startswith("WATCHED") for line in table) == 3


def test_run_row_records_the_geodb_used(tmp_path: Path, har: Path) -> None:
    db_file = tmp_path / "d.db"
    leakmap_cli("analyze", str(har), "--db", f"sqlite:///{db_file}", "--run-name", "dest")
    with sqlite3.connect(db_file) as connection:
        (geodb,) = connection.execute("SELECT geodb FROM runs WHERE name = 'dest'").fetchone()
    recorded = json.loads(geodb)
    assert {d["kind"] for d in recorded["databases"]} == {"country", "asn"}
    assert all(d["build_epoch"].startswith("20") for d in recorded["databases"])
    assert recorded["entities_version"]


def test_maxmind_city_databases_give_cities(tmp_path: Path, har: Path) -> None:
    path = tmp_path / "city.har"
    path.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"},
                                        "entries": [_entry("api.account.xiaomi.com", "175.16.199.3"),
                                                    _entry("www.google.com", "216.160.83.56"),
                                                    _entry("api.unlisted.example", "9.9.9.9")]}}))
    db = f"sqlite:///{tmp_path / 'c.db'}"
    analysed = leakmap_cli("analyze", str(path), "--db", db, "--geoip-dir", str(MAXMIND),
                           "--run-name", "city", "--geodb-max-age", "30")
    assert "Warning: geoip:" in analysed.stderr and "GeoIP2-City-Test.mmdb" in analysed.stderr
    flows = {f["host"]: f for f in _report(db)["flows"]}
    assert (flows["api.account.xiaomi.com"]["country"], flows["api.account.xiaomi.com"]["city"]) == (
        "CN", "Changchun")
    assert (flows["www.google.com"]["city"], flows["www.google.com"]["operator"]) == ("Milton", "Google")
    missing = flows["api.unlisted.example"]
    assert (missing["geo_scope"], missing["country"], missing["operator"]) == ("public", None, None)


def test_dns_answers_in_a_flow_file_locate_flows_without_an_address(tmp_path: Path) -> None:
    query = tflow.tdnsflow(resp=True)
    query.request.questions = [dns.Question("api.account.xiaomi.com", dns.types.A, dns.classes.IN)]
    query.response.questions = query.request.questions
    query.response.answers = [dns.ResourceRecord("api.account.xiaomi.com", dns.types.A,
                                                 dns.classes.IN, 60, bytes([13, 228, 0, 1]))]
    query.server_conn.peername = ("10.0.0.53", 53)
    web = tflow.tflow(resp=True)
    web.request.host = "api.account.xiaomi.com"
    web.request.headers["host"] = "api.account.xiaomi.com"
    web.server_conn.peername = None
    web.server_conn.address = None
    web.timestamp_created = web.request.timestamp_start = query.timestamp_created + 1
    capture = tmp_path / "dns.flow"
    with capture.open("wb") as handle:
        writer = io.FlowWriter(handle)
        writer.add(query)
        writer.add(web)
    db = f"sqlite:///{tmp_path / 'f.db'}"
    leakmap_cli("analyze", str(capture), "--db", db, "--run-name", "dns")
    flows = {f["flow_id"]: f for f in _report(db)["flows"]}
    located = flows[query.id]
    assert (located["kind"], located["geo_ip"], located["geo_ip_source"]) == ("dns", "13.228.0.1", "dns")
    assert (located["country"], located["operator"], located["watched"]) == ("SG", "Xiaomi", True)
    later = flows[web.id]
    assert (later["server_ip"], later["geo_ip"], later["geo_ip_source"]) == (None, "13.228.0.1", "dns")
    assert later["country"] == "SG"


# --------------------------------------------------------------------------
# geo lookup, geodb info


def test_geo_lookup_prints_what_the_pipeline_records() -> None:
    rows = json.loads(leakmap_cli("geo", "lookup", "api.account.xiaomi.com=13.228.0.1", "8.8.8.8",
                                  "10.1.2.3", "--format", "json").stdout)
    xiaomi, google_dns, private = rows
    assert (xiaomi["country"], xiaomi["asn"], xiaomi["operator"], xiaomi["operator_country"]) == (
        "SG", 16509, "Xiaomi", "CN")
    assert (xiaomi["attribution"], xiaomi["watched"], xiaomi["watch_reason"]) == (
        "domain", True, "operator_country=CN")
    assert xiaomi["destination"] == "server in SG (AS16509 Amazon.com, Inc.), operated by Xiaomi (CN)"
    assert (google_dns["asn"], google_dns["operator"]) == (15169, None)  # a cloud network alone
    assert (private["geo_scope"], private["country"]) == ("private", None)
    table = leakmap_cli("geo", "lookup", "api.account.xiaomi.com=13.228.0.1").stdout
    assert "operated by Xiaomi (CN)" in table and "watched: operator_country=CN" in table


def test_dns_answers_do_not_cross_captures(tmp_path: Path) -> None:
    query = tflow.tdnsflow(resp=True)
    query.request.questions = [dns.Question("api.account.xiaomi.com", dns.types.A, dns.classes.IN)]
    query.response.answers = [dns.ResourceRecord("api.account.xiaomi.com", dns.types.A,
                                                 dns.classes.IN, 60, bytes([13, 228, 0, 1]))]
    first, second = tmp_path / "first.flow", tmp_path / "second.har"
    with first.open("wb") as handle:
        io.FlowWriter(handle).add(query)
    second.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"},
                                          "entries": [_entry("api.account.xiaomi.com", None)]}}))
    db = f"sqlite:///{tmp_path / 'x.db'}"
    leakmap_cli("analyze", str(first), str(second), "--db", db, "--run-name", "two")
    alone = [f for f in _report(db)["flows"] if f["kind"] == "http"]
    assert len(alone) == 1 and (alone[0]["geo_ip"], alone[0]["country"]) == (None, None)


def test_geo_lookup_host_without_address(tmp_path: Path) -> None:
    rows = json.loads(leakmap_cli("geo", "lookup", "--no-resolve", "weixin.qq.com",
                                  "--format", "json").stdout)
    assert (rows[0]["ip"], rows[0]["operator"], rows[0]["operator_country"]) == (None, "Tencent", "CN")
    empty = json.loads(leakmap_cli("geo", "lookup", "api.xiaomi.com=", "--format", "json").stdout)
    assert (empty[0]["ip"], empty[0]["operator"], empty[0]["geo_scope"]) == (None, "Xiaomi", "unknown")
    assert empty[0]["destination"] == "server in an unknown network, operated by Xiaomi (CN)"
    resolved = json.loads(leakmap_cli("geo", "lookup", "localhost", "--format", "json").stdout)
    assert resolved[0]["ip"] in ("127.0.0.1", "::1") and resolved[0]["ip_source"] == "resolved"
    assert resolved[0]["geo_scope"] == "loopback"


def test_geo_lookup_with_policy_networks(tmp_path: Path) -> None:
    policy = tmp_path / "lab.yaml"
    policy.write_text("extends: default.yaml\nnetworks:\n"
                      "  - {cidr: 10.9.0.0/16, country: CN, operator: Lab, operator_country: CN}\n")
    rows = json.loads(leakmap_cli("geo", "lookup", "10.9.0.1", "--policy", str(policy),
                                  "--format", "json").stdout)
    assert (rows[0]["country"], rows[0]["operator"], rows[0]["attribution"]) == ("CN", "Lab", "policy")
    assert rows[0]["watch_reason"] == "server_country=CN, operator_country=CN"


def test_geo_lookup_bad_policy_is_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("extends: default.yaml\nnetworks:\n  - {cidr: 10.9.0.0/16, opertor: X}\n")
    result = leakmap_cli("geo", "lookup", "10.9.0.1", "--policy", str(policy), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"Error: {policy}:3:")
    assert "opertor" in result.stderr and "Traceback" not in result.stderr


def test_geodb_info_lists_databases_dates_and_networks() -> None:
    info = json.loads(leakmap_cli("geodb", "info", "--format", "json").stdout)
    sources = json.loads((Path(__file__).parents[1] / "geodb" / "data" / "SOURCES.json").read_text())
    by_kind = {db["kind"]: db for db in info["databases"]}
    assert set(by_kind) == {"country", "asn"}
    for kind, name in (("country", "leakmap-country.mmdb"), ("asn", "leakmap-asn.mmdb")):
        assert by_kind[kind]["networks"] == sources["files"][name]["networks"]
        assert by_kind[kind]["embedded"] is True
    assert info["entities"]["count"] >= 20
    table = leakmap_cli("geodb", "info").stdout
    assert "leakmap-country.mmdb" in table and "GeoLite2-ASN" in table


def test_geodb_info_warns_about_old_databases() -> None:
    result = leakmap_cli("geodb", "info", "--geoip-dir", str(MAXMIND), "--geodb-max-age", "30")
    assert "GeoIP2-City-Test.mmdb" in result.stdout
    assert "Warning: geoip:" in result.stderr and "older than 30 days" in result.stderr
    fresh = leakmap_cli("geodb", "info", "--geodb-max-age", "100000")
    assert "Warning" not in fresh.stderr


def test_geodb_info_missing_folder_is_one_line(tmp_path: Path) -> None:
    result = leakmap_cli("geodb", "info", "--geoip-dir", str(tmp_path / "nope"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert str(tmp_path / "nope") in result.stderr
