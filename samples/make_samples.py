"""Writes samples/redmi-2014.har: an F-Secure-style capture to replay offline.

    python samples/make_samples.py

The HAR recreates, with made-up values from samples/redmi-1s.yaml, what the
2014 reports describe: a Redmi 1S sending its IMEI, its own number, the
carrier, contacts' numbers and SMS senders to api.account.xiaomi.com in
Beijing; the same data to Xiaomi on AWS Singapore after the 2014 move; an
ordinary Google check; and decoys (a Luhn-invalid 15-digit number, a stranger's
number, truncated JSON) that must not be attributed to the device.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from urllib.parse import quote

IMEI = "865312345678901"
OWN = "+919812345678"
BEIJING = "123.125.114.144"  # China Unicom Beijing
AWS_SINGAPORE = "13.228.0.1"  # Amazon, Singapore
GOOGLE = "142.250.183.14"


def entry(when: str, method: str, url: str, ip: str, body: str | None = None,
          mime: str = "application/json", headers: dict[str, str] | None = None) -> dict:
    request: dict = {
        "method": method,
        "url": url,
        "httpVersion": "HTTP/1.1",
        "headers": [{"name": k, "value": v} for k, v in (headers or {}).items()],
        "queryString": [],
        "cookies": [],
        "headersSize": -1,
        "bodySize": len(body or ""),
    }
    if body is not None:
        request["postData"] = {"mimeType": mime, "text": body}
    return {
        "startedDateTime": when,
        "time": 120,
        "serverIPAddress": ip,
        "request": request,
        "response": {
            "status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1", "headers": [],
            "cookies": [], "content": {"size": 2, "mimeType": "application/json", "text": "{}"},
            "redirectURL": "", "headersSize": -1, "bodySize": 2,
        },
        "cache": {},
        "timings": {"send": 1, "wait": 100, "receive": 19},
    }


def entries() -> list[dict]:
    register = json.dumps({"imei": IMEI, "phone": OWN, "carrier": "Airtel", "model": "HM 1SW",
                           "serial": "865312345678903"})
    contacts = "&".join([f"c{i}={quote(n)}" for i, n in enumerate(["09811122233", "+91 99887 76655"])])
    sms_from = base64.b64encode(b"+919876500011").decode()
    sha1_imei = hashlib.sha1(IMEI.encode()).hexdigest()
    md5_imei = hashlib.md5(IMEI.encode()).hexdigest()
    return [
        entry("2014-08-04T09:15:02.120Z", "POST", "https://api.account.xiaomi.com/pass/v2/register",
              BEIJING, register),
        entry("2014-08-04T09:15:03.480Z", "POST",
              "https://api.account.xiaomi.com/pass/v2/contacts/upload", BEIJING, contacts,
              "application/x-www-form-urlencoded"),
        entry("2014-08-04T09:15:05.010Z", "GET",
              f"https://api.account.xiaomi.com/mipush/sms?from={quote(sms_from)}&d={sha1_imei}",
              BEIJING),
        entry("2014-08-04T09:15:06.300Z", "GET", "https://www.google.com/generate_204", GOOGLE),
        entry("2014-12-20T10:00:00.000Z", "POST", "https://sg-api.account.xiaomi.com/pass/v2/ping",
              AWS_SINGAPORE, json.dumps({"did": md5_imei, "contact": "+14155552671"})),
        entry("2014-12-20T10:00:01.000Z", "POST", "https://sg-api.account.xiaomi.com/pass/v2/log",
              AWS_SINGAPORE, '{"imei": "8653123456789', headers={"x-imei-check": "123456789012345"}),
    ]


def main() -> None:
    har = {"log": {"version": "1.2", "creator": {"name": "leakmap samples", "version": "1"},
                   "pages": [], "entries": entries()}}
    out = Path(__file__).with_name("redmi-2014.har")
    out.write_text(json.dumps(har, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
