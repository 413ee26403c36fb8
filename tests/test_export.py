"""``leakmap export``: flagged flows as HAR evidence, read back by leakmap itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import SAMPLES, leakmap_cli

DEVICE = SAMPLES / "redmi-1s.yaml"


def _analysed(tmp_path: Path) -> tuple[str, Path]:
    capture = tmp_path / "capture.har"
    shutil.copy(SAMPLES / "redmi-2014.har", capture)
    db = f"sqlite:///{tmp_path / 'e.db'}"
    leakmap_cli("analyze", str(capture), "--device", str(DEVICE), "--db", db, "--run-name", "orig")
    return db, capture


def _findings(db: str, run: str) -> set[tuple[str, str, str, str]]:
    report = json.loads(leakmap_cli("report", "--db", db, "--run", run, "--format", "json").stdout)
    return {(f["host"], f["field"], f["data_type"], f["encoding"]) for f in report["findings"]}


def test_exported_flows_are_whole_and_give_the_same_findings_again(tmp_path: Path) -> None:
    db, _ = _analysed(tmp_path)
    out = tmp_path / "evidence.har"
    result = leakmap_cli("export", "--db", db, "--run", "orig", "--flagged", "--watched", "-o", str(out))
    assert "exported 4 flows (4 whole from their capture)" in result.stderr
    har = json.loads(out.read_text())
    assert har["log"]["version"] == "1.2" and har["log"]["creator"]["name"] == "leakmap"
    for entry in har["log"]["entries"]:
        assert entry["_leakmap"]["watched"] and entry["_leakmap"]["findings"]
        assert entry["request"]["url"].startswith("https://") and entry["serverIPAddress"]
    leakmap_cli("analyze", str(out), "--device", str(DEVICE), "--db", db, "--run-name", "again")
    watched = {f for f in _findings(db, "orig") if "xiaomi" in f[0]}
    assert _findings(db, "again") == watched


def test_named_flows_and_a_capture_that_changed(tmp_path: Path) -> None:
    db, capture = _analysed(tmp_path)
    flows = json.loads(leakmap_cli("report", "--db", db, "--format", "json").stdout)["flows"]
    ids = [flows[0]["flow_id"], flows[-1]["flow_id"]]
    capture.write_text(capture.read_text().replace("Airtel", "Airte1"))  # no longer what was analysed
    out = json.loads(leakmap_cli("export", "--db", db, "--flows", *ids).stdout)
    assert [e["_leakmap"]["flow_id"] for e in out["log"]["entries"]] == ids
    assert all(e["comment"].startswith("from the leakmap database only") for e in out["log"]["entries"])
    assert out["log"]["entries"][0]["request"]["url"] == flows[0]["url"]
    wrong = leakmap_cli("export", "--db", db, "--flows", "nope", check=False)
    assert wrong.returncode == 1 and "no flow 'nope'" in wrong.stderr and "Traceback" not in wrong.stderr
