"""The requests every benchmark sends: small phone-like POSTs, with and without PII.

One deterministic mix feeds all three benchmarks, so the proxy, the
classifier and ``leakmap analyze`` see the same payloads:

* 6 of every 10 requests carry a known value of ``samples/redmi-1s.yaml``
  (IMEI, IMSI, own number, Android ID, a contact) in some encoding: plain
  JSON, MD5/SHA-1/SHA-256 hex, base64 in a query parameter, a hashed header,
  a percent-encoded form, base64-wrapped JSON, hex inside a gzip body;
* 4 of every 10 carry nothing personal (analytics event, config fetch, a
  Luhn-invalid decoy "serial", a heartbeat form).

Bodies differ per request (sequence number, session id, timestamp) so
nothing can be cached by content.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

# Known values of samples/redmi-1s.yaml.
IMEI = "865312345678901"
IMSI = "404451234567890"
PHONE = "+919812345678"
ANDROID_ID = "9774d56d682e549c"
CONTACT = "+91 99887 76655"

HOST = "api.account.xiaomi.com"
USER_AGENT = "Dalvik/1.6.0 (Linux; U; Android 4.4.4; HM 1SW MIUI/V6.6.1.0)"

# Public addresses for the offline benchmarks (classification, HAR): the
# pipeline's geolocation then runs against the embedded MaxMind-DB files
# instead of short-cutting on loopback.
PUBLIC_IPS = (
    "123.125.114.144", "13.228.0.1", "142.250.183.14", "47.88.1.1", "111.13.100.91",
    "8.8.8.8", "52.74.223.119", "203.208.41.1", "104.16.0.1", "157.240.1.35",
    "20.205.243.166", "183.232.231.172", "17.253.144.10", "23.215.0.1", "3.0.0.1",
    "49.44.0.1", "106.51.0.1", "180.149.132.1", "220.181.38.148", "36.110.0.1",
)


@dataclass(frozen=True)
class Request:
    template: str
    pii: bool
    method: str
    target: str  # path and query
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def wire(self, authority: str) -> bytes:
        """The HTTP/1.1 request as sent on a keep-alive connection."""
        lines = [f"{self.method} {self.target} HTTP/1.1", f"Host: {authority}",
                 f"User-Agent: {USER_AGENT}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def _hex(text: str, name: str) -> str:
    return hashlib.new(name, text.encode()).hexdigest()


def _json(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


JSON = ("Content-Type", "application/json; charset=utf-8")
FORM = ("Content-Type", "application/x-www-form-urlencoded")


def register(seq: int, rng: random.Random) -> Request:
    body = _json({"imei": IMEI, "phone": PHONE, "model": "HM 1SW", "carrier": "Airtel",
                  "seq": seq, "nonce": rng.getrandbits(64)})
    return Request("register_json", True, "POST", "/pass/v2/register", (JSON,), body)


def hashed_ids(seq: int, rng: random.Random) -> Request:
    body = _json({"did": _hex(IMEI, "md5"), "aid": _hex(ANDROID_ID, "sha1"),
                  "h": _hex(IMEI, "sha256").upper(), "ts": 1_407_000_000_000 + seq,
                  "sid": str(uuid.UUID(int=rng.getrandbits(128)))})
    return Request("hashed_ids", True, "POST", "/track/v1/ids", (JSON,), body)


def query_b64(seq: int, rng: random.Random) -> Request:
    phone = base64.b64encode(PHONE.encode()).decode()
    target = f"/sync/v3?ph={quote(phone)}&v=3&seq={seq}"
    headers = (JSON, ("X-Device", _hex(IMEI, "sha256")))
    body = _json({"note": "hello", "seq": seq, "r": rng.random()})
    return Request("query_b64_header_sha256", True, "POST", target, headers, body)


def contacts_form(seq: int, rng: random.Random) -> Request:
    body = f"c0=09811122233&c1={quote(CONTACT)}&imsi={IMSI}&seq={seq}".encode()
    return Request("contacts_form", True, "POST", "/pass/v2/contacts/upload", (FORM,), body)


def nested_b64(seq: int, rng: random.Random) -> Request:
    inner = json.dumps({"imei": IMEI, "android_id": ANDROID_ID, "seq": seq})
    body = _json({"payload": base64.b64encode(inner.encode()).decode(), "v": 2,
                  "nonce": rng.getrandbits(32)})
    return Request("nested_base64_json", True, "POST", "/mipush/log", (JSON,), body)


def gzip_hex(seq: int, rng: random.Random) -> Request:
    events = [{"e": "boot", "imei_hex": IMEI.encode().hex(), "n": seq},
              {"e": "net", "type": "wifi", "rssi": -60 - rng.randrange(20)}]
    body = gzip.compress(_json({"events": events}), mtime=0)
    headers = (JSON, ("Content-Encoding", "gzip"))
    return Request("gzip_hex", True, "POST", "/stat/batch", headers, body)


def analytics(seq: int, rng: random.Random) -> Request:
    body = _json({"event": "app_open", "session": str(uuid.UUID(int=rng.getrandbits(128))),
                  "ts": 1_407_000_000_000 + seq, "version": "5.2.1", "screen": [720, 1280],
                  "dpi": 320, "locale": "en_IN", "net": "wifi"})
    return Request("analytics", False, "POST", "/analytics/event", (JSON,), body)


def config(seq: int, rng: random.Random) -> Request:
    body = _json({"locale": "en_IN", "sdk": 19, "features": ["cloud", "push", "theme"],
                  "etag": f"{rng.getrandbits(64):016x}"})
    return Request("config", False, "POST", "/config/v1/fetch", (JSON,), body)


def decoy(seq: int, rng: random.Random) -> Request:
    # 15 digits next to the IMEI but Luhn-invalid: must not count as an IMEI.
    body = _json({"serial": "865312345678903", "build": "KTU84P", "seq": seq})
    return Request("decoy_serial", False, "POST", "/device/info", (JSON,), body)


def heartbeat(seq: int, rng: random.Random) -> Request:
    body = f"ts={1_407_000_000 + seq}&seq={seq}&state=fg".encode()
    return Request("heartbeat_form", False, "POST", "/ping", (FORM,), body)


TEMPLATES: tuple[Callable[[int, random.Random], Request], ...] = (
    register, analytics, hashed_ids, config, query_b64, decoy, contacts_form, heartbeat,
    nested_b64, gzip_hex,
)


def make_requests(count: int, seed: int = 2014) -> list[Request]:
    """``count`` requests, cycling through the ten templates (60 % with PII)."""
    rng = random.Random(seed)
    return [TEMPLATES[seq % len(TEMPLATES)](seq, rng) for seq in range(count)]


def decoded_body(request: Request) -> bytes:
    """The body as a HAR stores it (Content-Encoding undone)."""
    if ("Content-Encoding", "gzip") in request.headers:
        return gzip.decompress(request.body)
    return request.body
