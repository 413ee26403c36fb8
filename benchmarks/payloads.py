"""2 KB phone-like request bodies for the headline benchmark, JSON and form, some with PII.

Each body is about 2,000 bytes: an analytics batch, a device check-in or a
form post, padded with events and parameters that vary per request (sequence
number, session id, timestamps, random numbers), so nothing repeats.  Four in
ten carry values of the generated device profile (``bigprofile.py``): the
IMEI and own number in plain JSON, contacts' numbers as written in the phone
book, MD5/SHA-1/SHA-256 hex of ids and contacts, a percent-encoded contact in
a form, base64-wrapped JSON.  The requests are ``workload.Request`` objects, so
the load generator, the classifier and the flow-file writer all take them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import uuid
from collections.abc import Callable
from urllib.parse import quote, urlencode

from bigprofile import CONTACTS as CONTACT_COUNT
from bigprofile import IDS, contact_numbers
from workload import Request

TARGET_BYTES = 2000
JSON = ("Content-Type", "application/json; charset=utf-8")
FORM = ("Content-Type", "application/x-www-form-urlencoded")
CONTACTS = contact_numbers(CONTACT_COUNT)  # the same numbers as the profile's contacts
EVENTS = ("app_open", "screen_view", "click", "scroll", "impression", "purchase_check",
          "push_receipt", "heartbeat", "net_change", "app_background")
SCREENS = ("home", "feed", "settings", "detail", "search", "cart", "profile", "theme_store")


def _hex(text: str, name: str) -> str:
    return hashlib.new(name, text.encode()).hexdigest()


def _event(rng: random.Random, seq: int, index: int) -> dict[str, object]:
    return {"e": rng.choice(EVENTS), "ts": 1_407_000_000_000 + seq * 1000 + index,
            "screen": rng.choice(SCREENS), "dur": rng.randrange(10_000),
            "x": round(rng.random(), 6), "ref": f"{rng.getrandbits(48):012x}"}


def _fill(doc: dict[str, object], rng: random.Random, seq: int) -> bytes:
    """``doc`` with events appended until it is about TARGET_BYTES of JSON."""
    events: list[dict[str, object]] = []
    doc["events"] = events
    size = len(json.dumps(doc, separators=(",", ":")))
    while size < TARGET_BYTES - 100:
        events.append(_event(rng, seq, len(events)))
        size += len(json.dumps(events[-1], separators=(",", ":"))) + 1
    return json.dumps(doc, separators=(",", ":")).encode()


def _base(rng: random.Random, seq: int) -> dict[str, object]:
    return {"app": "com.miui.analytics", "ver": "5.2.1", "sdk": 19, "locale": "en_IN",
            "seq": seq, "session": str(uuid.UUID(int=rng.getrandbits(128)))}


def _pad(pairs: list[tuple[str, str]], make: Callable[[int], tuple[str, str]]) -> None:
    """Append form fields (plain text, no escaping needed) until about TARGET_BYTES."""
    size = len(urlencode(pairs, quote_via=quote))
    while size < TARGET_BYTES - 60:
        pairs.append(make(len(pairs)))
        size += len(pairs[-1][0]) + len(pairs[-1][1]) + 2


def analytics(seq: int, rng: random.Random) -> Request:
    return Request("json_analytics", False, "POST", "/v2/stat/batch", (JSON,),
                   _fill(_base(rng, seq), rng, seq))


def checkin(seq: int, rng: random.Random) -> Request:
    doc = {**_base(rng, seq), "imei": IDS["imei"], "phone": IDS["phone_number"],
           "carrier": IDS["carrier"], "contacts": [rng.choice(CONTACTS) for _ in range(3)]}
    return Request("json_checkin_pii", True, "POST", "/pass/v2/checkin", (JSON,),
                   _fill(doc, rng, seq))


def config_form(seq: int, rng: random.Random) -> Request:
    pairs = [("seq", str(seq)), ("sdk", "19"), ("locale", "en_IN")]
    _pad(pairs, lambda n: (f"k{n}", f"{rng.choice(EVENTS)}:{rng.getrandbits(40):x}"))
    return Request("form_config", False, "POST", "/config/v1/fetch", (FORM,),
                   urlencode(pairs, quote_via=quote).encode())


def hashed(seq: int, rng: random.Random) -> Request:
    digits = "".join(ch for ch in rng.choice(CONTACTS) if ch.isdigit())[-10:]
    doc = {**_base(rng, seq), "did": _hex(IDS["imei"], "md5"),
           "aid": _hex(IDS["android_id"], "sha1"), "ch": _hex(digits, "sha256")}
    return Request("json_hashed_pii", True, "POST", "/track/v1/ids", (JSON,), _fill(doc, rng, seq))


def feed(seq: int, rng: random.Random) -> Request:
    doc = {**_base(rng, seq), "page": seq % 50, "ids": [rng.getrandbits(60) for _ in range(20)]}
    return Request("json_feed", False, "POST", "/feed/v4/list", (JSON,), _fill(doc, rng, seq))


def contacts_form(seq: int, rng: random.Random) -> Request:
    pairs = [("seq", str(seq)), ("imsi", IDS["imsi"]), ("c0", rng.choice(CONTACTS))]
    _pad(pairs, lambda n: (f"m{n}", f"{rng.getrandbits(64):x}"))
    return Request("form_contacts_pii", True, "POST", "/pass/v2/contacts/upload", (FORM,),
                   urlencode(pairs, quote_via=quote).encode())


def wrapped(seq: int, rng: random.Random) -> Request:
    inner = json.dumps({"android_id": IDS["android_id"], "gaid": IDS["advertising_id"],
                        "seq": seq}).encode()
    doc = {**_base(rng, seq), "payload": base64.b64encode(inner).decode()}
    return Request("json_base64_pii", True, "POST", "/mipush/log", (JSON,), _fill(doc, rng, seq))


def search_form(seq: int, rng: random.Random) -> Request:
    pairs = [("seq", str(seq)), ("q", rng.choice(SCREENS))]
    _pad(pairs, lambda n: (f"f{n}", str(rng.random())))
    return Request("form_search", False, "POST", "/search", (FORM,),
                   urlencode(pairs, quote_via=quote).encode())


def experiments(seq: int, rng: random.Random) -> Request:
    doc = {**_base(rng, seq), "ab": {f"exp{i}": rng.randrange(4) for i in range(30)}}
    return Request("json_experiments", False, "POST", "/ab/v1/assign", (JSON,),
                   _fill(doc, rng, seq))


def location_free(seq: int, rng: random.Random) -> Request:
    doc = {**_base(rng, seq), "net": "wifi", "rssi": -60 - rng.randrange(20)}
    return Request("json_network", False, "POST", "/net/v1/report", (JSON,), _fill(doc, rng, seq))


TEMPLATES: tuple[Callable[[int, random.Random], Request], ...] = (
    analytics, checkin, config_form, hashed, feed, contacts_form, experiments, wrapped,
    search_form, location_free,
)


def make_requests(count: int, seed: int = 4) -> list[Request]:
    """``count`` requests cycling through the ten templates (4 in 10 with PII)."""
    rng = random.Random(seed)
    return [TEMPLATES[seq % len(TEMPLATES)](seq, rng) for seq in range(count)]


def make_bytes(total: int, seed: int = 5) -> list[Request]:
    """Requests whose bodies add up to at least ``total`` bytes."""
    rng = random.Random(seed)
    requests: list[Request] = []
    size = 0
    while size < total:
        request = TEMPLATES[len(requests) % len(TEMPLATES)](len(requests), rng)
        requests.append(request)
        size += len(request.body)
    return requests
