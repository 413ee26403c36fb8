"""An F-Secure-style replay: a phone's identifiers, contacts and SMS to Beijing, in many
encodings, mixed with decoys, through ``leakmap analyze`` and the real database."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
import zlib
from pathlib import Path
from urllib.parse import quote

from conftest import SAMPLES, leakmap_cli

IMEI = "865312345678901"
OWN = "+919812345678"
BEIJING = "123.125.114.144"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _entry(index: int, url: str, body: bytes = b"", mime: str = "application/json",
           headers: dict[str, str] | None = None) -> dict:
    post = {"mimeType": mime, "text": base64.b64encode(body).decode(), "encoding": "base64"}
    return {
        "startedDateTime": f"2014-08-04T09:{index:02d}:00.000Z",
        "serverIPAddress": BEIJING,
        "request": {
            "method": "POST" if body else "GET", "url": url, "httpVersion": "HTTP/1.1",
            "headers": [{"name": k, "value": v} for k, v in (headers or {}).items()],
            "postData": post if body else None,
        },
        "response": {"status": 200, "headers": [], "content": {"size": 0}},
    }


API = "https://api.account.xiaomi.com"

# (url, body, content type, headers, planted (field, data type, encoding))
PLANTED = [
    (f"{API}/a", json.dumps({"imei": int(IMEI)}).encode(), "application/json", {},
     ("request.body.json.imei", "imei", "plain")),
    (f"{API}/b?d=" + base64.urlsafe_b64encode(IMEI.encode()).decode().rstrip("="), b"", "", {},
     ("request.query.d", "imei", "base64")),
    (f"{API}/c", b"", "", {"X-Did": _md5(IMEI).upper()},
     ("request.headers.x-did", "imei", "md5")),
    (f"{API}/d", b"", "", {"Cookie": "s=1; uid=" + hashlib.sha1(IMEI.encode()).hexdigest()},
     ("request.cookies.uid", "imei", "sha1")),
    (f"{API}/e", ("h=" + hashlib.sha256(_md5(IMEI).encode()).hexdigest()).encode(),
     "application/x-www-form-urlencoded", {}, ("request.body.form.h", "imei", "sha256(md5)")),
    (f"{API}/f", json.dumps({"s": base64.b64encode(hashlib.sha1(IMEI.encode()).digest())
                             .decode()}).encode(), "application/json", {},
     ("request.body.json.s", "imei", "base64(sha1)")),
    (f"{API}/g", b"", "", {"X-P": quote(base64.b64encode(OWN.encode()).decode(), safe="")},
     ("request.headers.x-p", "phone_number", "url(base64)")),
    (f"{API}/h", json.dumps({"tel": "098123 45678"}).encode(), "application/json", {},
     ("request.body.json.tel", "phone_number", "plain")),
    (f"{API}/i?m=" + _md5("919812345678"), b"", "", {},
     ("request.query.m", "phone_number", "md5")),
    (f"{API}/j", json.dumps({"book": ["+91 98111 22233", "09988776655"]}).encode(),
     "application/json", {}, ("request.body.json.book[1]", "contact", "plain")),
    (f"{API}/k", b"Ravi:09811122233;Meera:+91 99887 76655", "text/plain", {},
     ("request.body.text", "contact", "plain")),
    (f"{API}/l?from=" + quote(base64.b64encode(b"+919876500011").decode()), b"", "", {},
     ("request.query.from", "contact", "base64")),
    (f"{API}/m", json.dumps({"inbox": [{"body": "Your OTP is 4411"}]}).encode(),
     "application/json", {}, ("request.body.json.inbox[0].body", "sms", "plain")),
    (f"{API}/n", b"", "", {"X-Carrier": "AIRTEL"}, ("request.headers.x-carrier", "carrier", "plain")),
    (f"{API}/o", b"<req><imsi>404451234567890</imsi></req>", "text/xml", {},
     ("request.body.xml.req.imsi", "imsi", "plain")),
    (f"{API}/p", gzip.compress(json.dumps({"n": "91-98123-45678"}).encode()), "application/json",
     {"Content-Encoding": "gzip"}, ("request.body.json.n", "phone_number", "plain")),
    (f"{API}/q", zlib.compress(b"mail=Asha.K%40example.com&imsi=404451234567890"),
     "application/x-www-form-urlencoded", {"Content-Encoding": "deflate"},
     ("request.body.form.imsi", "imsi", "plain")),
]

DECOYS = [
    (f"{API}/x1", json.dumps({"imei": "865312345678903", "sn": "490154203237519"}).encode(),
     "application/json", {}),
    (f"{API}/x2", json.dumps({"to": "+44 20 7946 0958", "x": "9812345679",
                              "y": "+44 9812345678"}).encode(), "application/json", {}),
    (f"{API}/x3", b'{"imei": "8653123456789', "application/json", {}),
    (f"{API}/x4", random.Random(7).randbytes(4096), "application/octet-stream", {}),
]


def _capture(path: Path) -> None:
    entries = [_entry(i, url, body, mime, headers)
               for i, (url, body, mime, headers, _) in enumerate(PLANTED)]
    entries += [_entry(len(entries) + i, url, body, mime, headers)
                for i, (url, body, mime, headers) in enumerate(DECOYS)]
    for entry in entries:
        if entry["request"]["postData"] is None:
            del entry["request"]["postData"]
        elif entry["request"]["postData"]["mimeType"]:
            entry["request"]["headers"].append(
                {"name": "Content-Type", "value": entry["request"]["postData"]["mimeType"]})
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": entries}}))


def test_every_planted_value_is_found_and_no_decoy_is_the_devices(tmp_path: Path) -> None:
    capture, db = tmp_path / "replay.har", f"sqlite:///{tmp_path / 'replay.db'}"
    _capture(capture)
    leakmap_cli("analyze", str(capture), "--device", str(SAMPLES / "redmi-1s.yaml"),
                "--db", db, "--run-name", "replay")
    report = json.loads(leakmap_cli("report", "--db", db, "--format", "json").stdout)
    assert len(report["flows"]) == len(PLANTED) + len(DECOYS)
    found = {(f["field"], f["data_type"], f["encoding"]): f for f in report["findings"]}
    missing = [p[-1] for p in PLANTED if p[-1] not in found]
    assert not missing
    for *_, planted in PLANTED:
        assert found[planted]["match"] == "known" and found[planted]["country"] == "CN"
    decoy_urls = {url for url, *_ in DECOYS}
    on_decoys = [f for f in report["findings"] if f["url"] in decoy_urls]
    assert not [(f["url"], f["field"], f["data_type"]) for f in on_decoys if f["match"] == "known"]
    assert not [f for f in on_decoys if f["data_type"] == "imei"]  # all Luhn-invalid
