"""``leakmap policy check`` and ``leakmap policy test``, run as an author runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mitmproxy import io
from mitmproxy.test import tflow

from leakmap.policies.model import default_policy_path

from conftest import SAMPLES, leakmap_cli

DEVICE = SAMPLES / "redmi-1s.yaml"
IMEI = "865312345678901"  # the sample device's (Luhn-valid)
PROBLEM = re.compile(r"^(?P<file>/[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<what>.+) \((?P<expected>.+)\)$")

# (file text, "LINE:COL", a fragment of the message) for policies broken one way each
BROKEN = [
    ("data_types:\n  x: {category: custom, severity: low\n", "3:1", "YAML syntax error"),
    ("datatypes: {}\n", "1:1", "unknown key 'datatypes' (did you mean 'data_types'?)"),
    ("data_types:\n  imei:\n    categroy: device_id\n    severity: high\n", "3:5",
     "unknown key 'categroy' (did you mean 'category'?)"),
    ("data_types:\n  x: {category: custom, severity: hgih}\n", "2:35",
     "unknown severity 'hgih' (did you mean 'high'?)"),
    ("data_types:\n  x: {category: device, severity: low}\n", "2:17",
     "unknown category 'device' (did you mean 'device_id'?)"),
    ("data_types:\n  x:\n    category: custom\n    severity: low\n"
     "    pattern: {regex: '\\d+', validator: lunh}\n", "5:40", "unknown validator 'lunh'"),
    ("data_types:\n  x:\n    category: custom\n    severity: low\n"
     "    pattern: {regex: '[0-9'}\n", "5:22", "regex does not compile"),
    ("data_types:\n  x:\n    category: custom\n    severity: low\n"
     "    pattern: {regex: '(?<=a)(\\d+)*b'}\n", "5:22", "regex can backtrack catastrophically"),
    ("data_types:\n  x: {category: custom, severity: low, keys: {names: 3}}\n", "2:54",
     "wrong type: a number (expected a list of strings)"),
    ("data_types: [imei]\n", "1:13", "wrong type: a list (expected a mapping of data type names)"),
    ("data_types:\n  x:\n    category: custom\n    severity: low\n"
     "    known: {fields: [imei], transforms: [sha256(mdd5)]}\n", "5:42",
     "unknown transform 'mdd5' (did you mean 'md5'?)"),
    ("data_types:\n  x: {category: custom, severity: low}\nwatch: {countries: [CHN]}\n", "3:21",
     "'CHN' is not a country code"),
    ("extends: default.yaml\nactions:\n  - {data_types: [imie], action: block}\n", "3:19",
     "unknown data type 'imie'"),
    ("extends: default.yaml\nactions:\n  - {watched: true, action: blok}\n", "3:29",
     "unknown action 'blok' (did you mean 'block'?)"),
    ("extends: default.yaml\nactions:\n  - {watched: maybe, action: block}\n", "3:15",
     "wrong type: a string (expected true or false)"),
    ("extends: default.yaml\nactions:\n  - {data_types: [imei]}\n", "3:5", "rule has no action"),
    ("extends: nothere.yaml\n", "1:10", "extended policy"),
    ("data_types:\n  x: {category: custom}\n", "2:6", "data type 'x' has no severity"),
    ("extends: default.yaml\nactions:\n  - {data_types: [], action: block}\n", "3:18",
     "data_types is empty"),
]


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_each_broken_policy_gets_its_file_line_column_and_a_useful_message(tmp_path: Path) -> None:
    paths = [_write(tmp_path, f"broken{index}.yaml", text) for index, (text, _, _) in enumerate(BROKEN)]
    result = leakmap_cli("policy", "check", *map(str, paths), check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for path, (_, spot, fragment) in zip(paths, BROKEN, strict=True):
        mine = [line for line in lines if line.startswith(f"{path.resolve()}:")]
        assert mine, f"nothing reported for {path.name}: {result.stdout}"
        assert any(line.startswith(f"{path.resolve()}:{spot}: ") and fragment in line
                   for line in mine), (path.name, mine)
    for line in lines:  # FILE:LINE:COL: what is wrong (what was expected), counted from 1
        match = PROBLEM.match(line)
        assert match and int(match["line"]) >= 1 and int(match["col"]) >= 1, line


def test_every_problem_of_a_file_is_reported_in_line_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "many.yaml", (
        "extends: default.yaml\n"
        "data_types:\n"
        "  aadhaar:\n"
        "    category: custom\n"
        "    severity: hgih\n"
        "    pattern: {regex: '[0-9]{12}', validator: verhoef}\n"
        "actions:\n"
        "  - {data_types: [aadhaar], action: block}\n"  # the broken type is still a name
        "bogus: 1\n"))
    result = leakmap_cli("policy", "check", str(path), check=False)
    assert result.returncode == 1
    spots = [line.split(": ", 1)[0].rsplit(":", 2)[1:] for line in result.stdout.splitlines()]
    assert spots == [["5", "15"], ["6", "46"], ["9", "1"]], result.stdout
    assert "did you mean 'verhoeff'?" in result.stdout


def test_a_cycle_is_reported_at_the_extends_line_that_closes_it(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", "extends: b.yaml\ndata_types: {x: {category: custom, severity: low}}\n")
    closing = _write(tmp_path, "b.yaml", "# the second file\nname: b\nextends: a.yaml\n")
    result = leakmap_cli("policy", "check", str(tmp_path / "a.yaml"), check=False)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{closing.resolve()}:3:10: extends cycle: a.yaml -> b.yaml -> "
                                    "a.yaml"), result.stdout


def test_valid_policies_pass_including_every_shipped_one(tmp_path: Path) -> None:
    shipped = sorted(default_policy_path().parent.glob("*.yaml"))
    assert len(shipped) >= 5
    lab = _write(tmp_path, "lab.yaml", (
        "extends: default.yaml\n"
        "data_types:\n"
        "  carrier: {category: network, severity: critical, known: {fields: carrier}}\n"
        "  aadhaar:\n"
        "    category: custom\n"
        "    severity: critical\n"
        "    pattern: {regex: '(?<![0-9])[2-9][0-9]{11}(?![0-9])', validator: verhoeff}\n"
        "    keys: {names: aadhaar, value: {validator: verhoeff}}\n"
        "  empty_is_fine:\n"
        "    category: custom\n"
        "    severity: info\n"
        "    description:\n"
        "watch: {allow: {countries: [IN, 'NO'], operator_countries: IN}}\n"
        "actions:\n"
        "  - {name: ids, categories: [device_id], data_types: aadhaar, watched: true, action: redact}\n"
        "  - {hosts: ['*.xiaomi.com'], countries: [SG], operator_countries: [CN], action: alert}\n"
        "  - {action: log}\n"))
    result = leakmap_cli("policy", "check", *map(str, shipped), str(lab), check=False)
    assert result.returncode == 0, result.stdout
    assert result.stdout == ""
    assert f"{lab}: ok" in result.stderr and "3 action rule(s) (alert, redact)" in result.stderr


def test_a_policy_without_data_types_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "empty.yaml", "watch: {countries: [CN]}\n")
    result = leakmap_cli("policy", "check", str(path), check=False)
    assert result.returncode == 0 and "warning: policy defines no data types" in result.stderr


def test_analyze_refuses_an_invalid_policy_with_the_same_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.yaml", BROKEN[3][0] + "bogus: 1\n")
    check = leakmap_cli("policy", "check", str(path), check=False)
    result = leakmap_cli("analyze", str(SAMPLES / "redmi-2014.har"), "--policy", str(path),
                         "--db", f"sqlite:///{tmp_path / 'x.db'}", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"Error: {line}" for line in check.stdout.splitlines()]
    assert not (tmp_path / "x.db").exists()  # refused before anything was touched
    live = leakmap_cli("run", "--policy", str(path), "--listen-port", "0",
                       "--db", f"sqlite:///{tmp_path / 'y.db'}", check=False)
    assert live.returncode == 1 and live.stderr.splitlines() == result.stderr.splitlines()
    assert not (tmp_path / "y.db").exists()


# --------------------------------------------------------------------------
# policy test

STRICT = ("extends: default.yaml\n"
          "actions:\n"
          "  - {name: ids-to-china, data_types: [imei, phone_number], watched: true, action: block}\n"
          "  - {watched: true, action: alert}\n")


def test_policy_test_on_a_json_body_names_field_encoding_and_rule(tmp_path: Path) -> None:
    policy = _write(tmp_path, "strict.yaml", STRICT)
    body = _write(tmp_path, "body.json", json.dumps({"device": {"imei": IMEI}, "n": 1}))
    result = leakmap_cli("policy", "test", str(policy), "--sample", str(body), "--device",
                         str(DEVICE), "--url", "https://api.account.xiaomi.com/pass/register",
                         "--format", "json")
    [flow] = json.loads(result.stdout)
    assert flow["watched"] and flow["operator_country"] == "CN"
    assert flow["action"] == "block" and flow["action_rule"] == "actions[1] ids-to-china"
    [finding] = [f for f in flow["findings"] if f["field"] == "request.body.json.device.imei"]
    assert finding["data_type"] == "imei" and finding["encoding"] == "plain"
    assert finding["rule"] == "data_types.imei.known" and finding["action"] == "block"
    assert finding["value"] == "8653•••••••8901"  # masked unless --show-values
    text = leakmap_cli("policy", "test", str(policy), "--sample", str(body), "--device", str(DEVICE),
                       "--url", "https://example.org/").stdout
    assert "request.body.json.device.imei" in text and "data_types.imei.known" in text
    assert "BLOCK" not in text  # not watched: the rule does not cover it


def test_policy_test_reads_a_raw_form_body_a_har_entry_and_a_flow_file(tmp_path: Path) -> None:
    policy = _write(tmp_path, "custom.yaml", (
        "extends: default.yaml\n"
        "data_types:\n"
        "  wifi_ssid: {category: network, severity: low, keys: {names: ['ssid'], "
        "value: {regex: '.{1,32}'}}}\n"))
    raw = _write(tmp_path, "body.bin", "ssid=LabNet&x=1")
    text = leakmap_cli("policy", "test", str(policy), "--sample", str(raw), "--content-type",
                       "application/x-www-form-urlencoded", "--show-values").stdout
    assert re.search(r"wifi_ssid\s+low\s+request\.body\.form\.ssid\s+plain\s+"
                     r"data_types\.wifi_ssid\.keys\s+LabNet", text), text
    entry = {"request": {"method": "GET", "url": f"https://h.example/a?imei={IMEI}",
                         "headers": [], "queryString": []}, "response": {"status": 200}}
    sample = _write(tmp_path, "entry.json", json.dumps(entry))
    found = json.loads(leakmap_cli("policy", "test", str(policy), "--sample", str(sample),
                                   "--format", "json").stdout)
    assert [(f["field"], f["rule"]) for f in found[0]["findings"]] == [
        ("request.query.imei", "data_types.imei.pattern")]
    flow = tflow.tflow(resp=True)
    flow.request.path = "/x?ssid=Home"
    with (tmp_path / "one.flow").open("wb") as handle:
        io.FlowWriter(handle).add(flow)
        io.FlowWriter(handle).add(tflow.tflow(resp=True))
    found = json.loads(leakmap_cli("policy", "test", str(policy), "--sample",
                                   str(tmp_path / "one.flow"), "--format", "json").stdout)
    assert len(found) == 2 and found[0]["findings"][0]["data_type"] == "wifi_ssid"
    only = json.loads(leakmap_cli("policy", "test", str(policy), "--sample", str(tmp_path / "one.flow"),
                                  "--entry", "2", "--format", "json").stdout)
    assert len(only) == 1 and only[0]["findings"] == []


@pytest.mark.parametrize("args", [["--entry", "3"], ["--device", "/nonexistent/device.yaml"]])
def test_policy_test_fails_in_one_line(tmp_path: Path, args: list[str]) -> None:
    body = _write(tmp_path, "b.json", "{}")
    result = leakmap_cli("policy", "test", str(default_policy_path()), "--sample", str(body), *args,
                         check=False)
    assert result.returncode == 1 and result.stderr.startswith("Error: ")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_the_full_example_in_the_docs_is_a_valid_policy(tmp_path: Path) -> None:
    import jsonschema
    import yaml

    docs = (Path(__file__).parent.parent / "docs" / "policy.md").read_text()
    start = docs.index("# lab-policy.yaml")
    example = _write(tmp_path, "lab-policy.yaml", docs[start:docs.index("```", start)])
    result = leakmap_cli("policy", "check", str(example), check=False)
    assert result.returncode == 0, result.stdout
    assert "7 data types, 3 action rule(s) (alert, block, redact)" in result.stderr
    schema = json.loads((default_policy_path().parent / "policy.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(example.read_text()), schema)
