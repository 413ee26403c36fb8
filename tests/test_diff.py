"""``leakmap diff``: before/after and differential runs of the same app."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import SAMPLES, leakmap_cli

IMEI_A, IMEI_B = "865312345678901", "490154203237518"  # both Luhn-valid


def _obfuscated(imei: str) -> str:
    """What an app might do that no known encoding covers: reversed, digits shifted."""
    return "".join(str((int(ch) + 3) % 10) for ch in reversed(imei)) + "Zq"


def _capture(path: Path, imei: str, hosts: list[str]) -> Path:
    entries = []
    for index, host in enumerate(hosts):
        body = {"imei": imei, "tk": _obfuscated(imei), "nonce": f"n{index}x{hash((imei, index)) % 10**9}",
                "ver": "build-2014.8.4"}
        entries.append({
            "startedDateTime": f"2014-08-04T09:15:0{index}.000Z",
            "request": {"method": "POST", "url": f"https://{host}/v1/report", "httpVersion": "HTTP/1.1",
                        "headers": [], "queryString": [],
                        "postData": {"mimeType": "application/json", "text": json.dumps(body)}},
            "response": {"status": 200}, "serverIPAddress": "10.1.2.3"})
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": entries}}))
    return path


def _run(tmp_path: Path, db: str, name: str, imei: str, hosts: list[str]) -> None:
    device = tmp_path / f"{name}.yaml"
    device.write_text((SAMPLES / "redmi-1s.yaml").read_text().replace(IMEI_A, imei))
    capture = _capture(tmp_path / f"{name}.har", imei, hosts)
    leakmap_cli("analyze", str(capture), "--device", str(device), "--db", db, "--run-name", name)


def test_differential_runs_flag_a_value_that_follows_the_device(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'd.db'}"
    _run(tmp_path, db, "phone-a", IMEI_A, ["api.example.cn", "api.example.cn", "log.example.com"])
    _run(tmp_path, db, "phone-b", IMEI_B, ["api.example.cn", "api.example.cn"])
    result = json.loads(leakmap_cli("diff", "phone-a", "phone-b", "--db", db, "--format", "json").stdout)
    assert result["device_changed"] is True
    assert result["only_in"]["destinations"]["phone-a"] == [["log.example.com", "??", "-"]]
    assert result["only_in"]["destinations"]["phone-b"] == []
    followed = {(c["host"], c["field"]): c for c in result["followed_device"]}
    token = followed[("api.example.cn", "request.body.json.tk")]
    assert token["finding"] is None  # no known encoding: found only by comparing the runs
    assert token["phone-a"] != token["phone-b"] and "•" in token["phone-a"]  # masked
    assert followed[("api.example.cn", "request.body.json.imei")]["finding"] == "imei"
    assert not any(field.endswith((".nonce", ".ver")) for _, field in followed)  # changes per flow / never
    text = leakmap_cli("diff", "phone-a", "phone-b", "--db", db).stdout
    assert "request.body.json.tk" in text and "obfuscated?" in text
    page = leakmap_cli("diff", "phone-a", "phone-b", "--db", db, "--format", "html").stdout
    assert '<section id="diff">' in page and "log.example.com" in page


def test_before_and_after_with_the_same_device(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'b.db'}"
    _run(tmp_path, db, "cloud-on", IMEI_A, ["api.account.xiaomi.com"])
    leakmap_cli("analyze", str(SAMPLES / "redmi-2014.har"), "--device", str(tmp_path / "cloud-on.yaml"),
                "--db", db, "--run-name", "sample")
    result = json.loads(leakmap_cli("diff", "sample", "cloud-on", "--db", db, "--format", "json").stdout)
    assert result["device_changed"] is False and result["followed_device"] == []
    assert "contact" in result["only_in"]["data_types"]["sample"]
    assert ["api.account.xiaomi.com", "contact"] in result["only_in"]["data_types_per_destination"]["sample"]
    missing = leakmap_cli("diff", "sample", "nope", "--db", db, check=False)
    assert missing.returncode == 1 and "no run named 'nope'" in missing.stderr
