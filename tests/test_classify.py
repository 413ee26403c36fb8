"""The classifier on real policy and profile files: known values in every form, shapes, keys."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from leakmap.core.classify import Classifier, encoding_chain
from leakmap.core.device import load_device
from leakmap.core.exchange import Exchange
from leakmap.policies.model import load_policy

from conftest import SAMPLES

IMEI = "865312345678901"
OWN = "+919812345678"


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(load_policy(), load_device(SAMPLES / "redmi-1s.yaml"))


@pytest.fixture(scope="module")
def blind() -> Classifier:
    """No device profile: only shapes and key names."""
    return Classifier(load_policy(), load_device(None))


def request(url: str = "https://api.example.cn/x", body: bytes = b"",
            headers: list[tuple[str, str]] | None = None) -> Exchange:
    return Exchange(flow_id="f", kind="http", timestamp=0.0, url=url, method="POST",
                    request_headers=headers or [], request_body=body)


def found(classifier: Classifier, exchange: Exchange) -> set[tuple[str, str, str, str]]:
    return {(f.field, f.data_type, f.encoding, f.match)
            for f in classifier.classify(exchange).findings}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def digest(name: str, text: str) -> str:
    return hashlib.new(name, text.encode()).hexdigest()


ENCODED_IMEI = [
    (IMEI, "plain"),
    (b64(IMEI), "base64"),
    (base64.urlsafe_b64encode(IMEI.encode()).decode().rstrip("="), "base64"),
    (IMEI.encode().hex(), "hex"),
    (IMEI.encode().hex().upper(), "hex"),
    (digest("md5", IMEI), "md5"),
    (digest("sha1", IMEI).upper(), "sha1"),
    (digest("sha256", IMEI), "sha256"),
    (base64.b64encode(hashlib.sha1(IMEI.encode()).digest()).decode(), "base64(sha1)"),
    (digest("sha256", digest("md5", IMEI)), "sha256(md5)"),
    (b64(digest("sha1", IMEI)), "base64(sha1)"),
]


@pytest.mark.parametrize(("value", "encoding"), ENCODED_IMEI)
def test_known_imei_found_in_each_encoding_in_a_header(classifier, value, encoding) -> None:
    exchange = request(headers=[("X-Token", value)])
    assert ("request.headers.x-token", "imei", encoding, "known") in found(classifier, exchange)


def test_percent_encoding_twice_and_url_of_base64(classifier) -> None:
    twice = quote(quote(OWN, safe=""), safe="")
    url_b64 = quote(base64.b64encode(OWN.encode()).decode(), safe="")  # "==" becomes %3D%3D
    exchange = request(headers=[("X-A", twice), ("X-B", url_b64)])
    result = found(classifier, exchange)
    assert ("request.headers.x-a", "phone_number", "url(url)", "known") in result
    assert ("request.headers.x-b", "phone_number", "url(base64)", "known") in result


@pytest.mark.parametrize("written", ["+919812345678", "919812345678", "09812345678",
                                     "9812345678", "+91 98123 45678", "098123-45678",
                                     "(098123) 45678"])
def test_own_number_in_any_written_form(classifier, written) -> None:
    body = json.dumps({"msisdn_field": written}).encode()
    exchange = request(body=body, headers=[("content-type", "application/json")])
    assert ("request.body.json.msisdn_field", "phone_number", "plain", "known") in found(
        classifier, exchange
    )


def test_contacts_and_sms_senders_are_contacts_and_sms_text_is_sms(classifier) -> None:
    body = json.dumps({
        "book": [{"n": "R", "tel": "+91 98111 22233"}, {"n": "M", "tel": "9988776655"}],
        "inbox": [{"from": "+919876500011", "text": "Your OTP is 4411"}],
    }).encode()
    result = found(classifier, request(body=body, headers=[("content-type", "application/json")]))
    assert ("request.body.json.book[0].tel", "contact", "plain", "known") in result
    assert ("request.body.json.book[1].tel", "contact", "plain", "known") in result
    assert ("request.body.json.inbox[0].from", "contact", "plain", "known") in result
    assert ("request.body.json.inbox[0].text", "sms", "plain", "known") in result
    # a contact's number is not also reported as a bare phone-number shape
    assert not any(f[0] == "request.body.json.book[0].tel" and f[1] == "phone_number"
                   for f in result)


def test_gzip_body_with_json_inside_base64_inside_json(classifier) -> None:
    inner = b64(json.dumps({"imei": IMEI, "carrier": "Airtel"}))
    body = gzip.compress(json.dumps({"payload": inner}).encode())
    exchange = request(body=body, headers=[("content-type", "application/json"),
                                           ("content-encoding", "gzip")])
    result = found(classifier, exchange)
    assert ("request.body.json.payload.json.imei", "imei", "base64", "known") in result
    assert ("request.body.json.payload.json.carrier", "carrier", "base64", "known") in result


def test_luhn_invalid_number_is_never_an_imei(classifier, blind) -> None:
    body = json.dumps({"imei": "865312345678903", "serial": "865312345678903"}).encode()
    for each in (classifier, blind):
        result = found(each, request(body=body, headers=[("content-type", "application/json")]))
        assert not any(f[1] == "imei" for f in result)


def test_pattern_and_key_findings_without_a_profile(blind) -> None:
    body = json.dumps({"x": IMEI, "imsi": "404451234567890", "email": "a.b@example.org",
                       "imei": ""}).encode()
    result = found(blind, request(body=body, headers=[("content-type", "application/json")]))
    assert ("request.body.json.x", "imei", "plain", "pattern") in result
    assert ("request.body.json.imsi", "imsi", "plain", "key") in result
    assert ("request.body.json.email", "email", "plain", "pattern") in result
    assert not any(f[0] == "request.body.json.imei" for f in result)  # empty is never a finding


def test_someone_elses_number_is_not_the_devices(classifier) -> None:
    body = json.dumps({"to": "+14155552671"}).encode()
    findings = classifier.classify(
        request(body=body, headers=[("content-type", "application/json")])
    ).findings
    assert findings and all(f.match != "known" for f in findings)


def test_location_matched_by_distance_under_any_keys(tmp_path: Path) -> None:
    profile = tmp_path / "d.yaml"
    profile.write_text("location: {lat: 28.6139, lon: 77.2090}\n")
    located = Classifier(load_policy(), load_device(profile))
    near = json.dumps({"a": {"p": "28.6201", "q": "77.2101"}, "far": "12.97,77.59"}).encode()
    result = found(located, request(body=near, headers=[("content-type", "application/json")]))
    assert ("request.body.json.a.p", "location", "plain", "known") in result
    assert not any(f[0] == "request.body.json.far" and f[3] == "known" for f in result)


def test_form_query_cookie_and_multipart_paths(classifier) -> None:
    multipart = (
        b"--XyZ\r\nContent-Disposition: form-data; name=\"dev\"\r\n\r\n" + IMEI.encode()
        + b"\r\n--XyZ--\r\n"
    )
    exchange = request(
        url=f"https://h.cn/p?imei={IMEI}",
        body=multipart,
        headers=[("content-type", "multipart/form-data; boundary=XyZ"),
                 ("Cookie", f"sid=1; aid={IMEI}")],
    )
    result = found(classifier, exchange)
    assert ("request.query.imei", "imei", "plain", "known") in result
    assert ("request.cookies.aid", "imei", "plain", "known") in result
    assert ("request.body.multipart.dev.text", "imei", "plain", "known") in result


def test_one_finding_per_field_and_type_with_the_strongest_match(classifier) -> None:
    body = json.dumps({"imei": IMEI}).encode()
    findings = classifier.classify(
        request(body=body, headers=[("content-type", "application/json")])
    ).findings
    imei = [f for f in findings if f.field == "request.body.json.imei"]
    assert [(f.data_type, f.match) for f in imei] == [("imei", "known")]


def test_encoding_chain_is_written_outermost_first() -> None:
    assert encoding_chain((), "plain") == "plain"
    assert encoding_chain(("url",), "base64") == "url(base64)"
    assert encoding_chain(("base64",), "sha256(md5)") == "base64(sha256(md5))"
    assert encoding_chain(("url", "base64"), "plain") == "url(base64)"


@pytest.mark.parametrize("decoy", ["+44 9812345678", "+1 (981) 234-5678 ext", "0044 9812345678",
                                   "+91 9812345679", "19812345678"])
def test_the_devices_digits_inside_someone_elses_number_are_not_known(classifier, decoy) -> None:
    body = json.dumps({"note": f"call {decoy} now"}).encode()
    findings = classifier.classify(
        request(body=body, headers=[("content-type", "application/json")])
    ).findings
    assert not [f for f in findings if f.match == "known"], findings


def test_location_in_query_with_other_numbers_between_and_in_headers(tmp_path: Path) -> None:
    profile = tmp_path / "d.yaml"
    profile.write_text("location: {lat: 28.6139, lon: 77.2090}\n")
    located = Classifier(load_policy(), load_device(profile))
    exchange = request(url="https://h.cn/p?lat=28.6150&acc=12.50&lng=77.2080",
                       headers=[("X-Geo-Lon", "77.2095"), ("X-Geo-Lat", "28.6140")])
    fields = {f[0] for f in found(located, exchange) if f[1] == "location" and f[3] == "known"}
    assert "request.query.lat" in fields
    assert "request.headers.x-geo-lon" in fields


def test_location_without_profile_needs_location_names_on_both_values(blind) -> None:
    named = request(body=json.dumps({"lat": "12.97", "lng": "77.59", "acc": "10.25"}).encode(),
                    headers=[("content-type", "application/json")])
    found_named = found(blind, named)
    assert ("request.body.json.lat", "location", "plain", "key") in found_named
    assert not any(f[0] == "request.body.json.acc" for f in found_named)
    unnamed = request(body=json.dumps({"price": "12.97", "rate": "77.59"}).encode(),
                      headers=[("content-type", "application/json")])
    assert not any(f[1] == "location" for f in found(blind, unnamed))


@pytest.fixture(scope="module")
def chinese_phone(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    profile = tmp_path_factory.mktemp("cn") / "d.yaml"
    profile.write_text(
        'phone_number: "+86 157 1234 5678"\nemail: alice@example.com\ncarrier: China Mobile\n'
        'contacts: [{name: A, phone: "+44 7911 123456"}]\nsms: [{from: "10086", body: "hi"}]\n'
    )
    return Classifier(load_policy(), load_device(profile))


@pytest.mark.parametrize("decoy", ["+15712345678", "+1 571 234 5678", "+9812345678",
                                   "mary.alice@example.com", "bob+alice@example.com",
                                   "alice@example.com.cn", "100860", "call 10086 now",
                                   "api.chinamobile.com China Mobile"])
def test_other_peoples_numbers_and_addresses_are_not_known(chinese_phone, decoy) -> None:
    findings = chinese_phone.classify(request(headers=[("X-Note", decoy)])).findings
    assert not [f for f in findings if f.match == "known"], findings


@pytest.mark.parametrize(("written", "data_type"), [
    ("13812345678 15712345678", "phone_number"),
    ("157 1234 5678", "phone_number"),
    ("+8615712345678 +447911123456", "contact"),
    ("7911 123456", "contact"),
    ("10086", "contact"),
    ("China Mobile", "carrier"),
    ("Alice@Example.com", "email"),
])
def test_planted_values_in_awkward_layouts_are_known(chinese_phone, written, data_type) -> None:
    findings = chinese_phone.classify(request(headers=[("X-Note", written)])).findings
    assert any(f.data_type == data_type and f.match == "known" for f in findings), findings


def test_awkward_spellings_found_by_the_adversarial_replay(tmp_path: Path) -> None:
    mime_b64 = base64.encodebytes(("Your OTP is 4411. " * 6).encode()).decode()  # 76-char lines
    siblings = {f"s{i}": f"0.{i:03d}" for i in range(45)} | {"la": "28.6159", "lo": "77.2110"}
    body = json.dumps({"b": mime_b64, "t": "098123/45678", "imei": "86-531234-567890-1",
                       "sensors": siblings}).encode()
    profile = tmp_path / "device.yaml"
    profile.write_text((SAMPLES / "redmi-1s.yaml").read_text()
                       + "location: {lat: 28.6139, lon: 77.2090}\n")
    located = Classifier(load_policy(), load_device(profile))
    result = found(located, request(body=body, headers=[("content-type", "application/json")]))
    assert ("request.body.json.b", "sms", "base64", "known") in result
    assert ("request.body.json.t", "phone_number", "plain", "known") in result
    assert ("request.body.json.imei", "imei", "plain", "known") in result
    assert ("request.body.json.sensors.la", "location", "plain", "known") in result


@pytest.mark.parametrize("decoy", ["+44/9812345678", "+44  9812345678", "+44\u00a09812345678",
                                   "52.970000000000006", "86531234567890"])
def test_more_decoys_are_not_the_devices(classifier, decoy) -> None:
    findings = classifier.classify(request(headers=[("X-Note", decoy)])).findings
    assert not [f for f in findings if f.match == "known" or f.data_type == "imei"], findings


def test_percent_encoded_address_inside_a_longer_one_is_not_known(chinese_phone) -> None:
    for decoy in ("mr.alice%40example.com", "alice%40example.com.cn"):
        findings = chinese_phone.classify(request(headers=[("X-U", decoy)])).findings
        assert not [f for f in findings if f.match == "known"], findings


# -- a body is walked only where the raw scans found something ---------------
# (Classifier._json_hot / _form_hot, core/decode.py:walk_hot_json): the findings
# must be those of a walk of everything.

_QUIET_KEYS = ["imei", "phone", "msisdn", "lat", "lon", "email", "e", "ts", "ref", "x", "carrier",
               "device_id", "mac", "session", "contacts"]
_QUIET_VALUES = [
    IMEI, OWN, "9812345678", "+91 98123 45678", "Airtel", "airtel", "1407000000123",
    "356938035643809", "490154203237518", "app_background", "theme_store", "12.971599",
    "77.594566", "a@b.co", "00:1a:2b:3c:4d:5e", b64(IMEI), b64("hello there"), IMEI.encode().hex(),
    digest("md5", IMEI), digest("sha256", OWN), "e9043fce-24eb-4742-d77c-f5ac96822079", "ok",
    "", "x" * 40, "8991000000000000001", "(98123) 456-78", "98.123.456.78", "caf\u00e9 98123 45678",
    # found only by decoding what the raw bytes show escaped, percent-encoded or with &
    '{"carrier": "Vodafone"}', "carrier%3DVodafone%26x%3D1", "carrier=Vodafone&x=1",
    b64('{"carrier": "Vodafone"}'), b"carrier=Vodafone&x=1".hex(),
    # base64 or hex of text with a space (a value with nothing more inside once decoded),
    # found only by a pattern (not the device's IMEI) or as a number in a layout that no
    # written form has
    b64("IMEI 356938035643809"), b"id 490154203237518".hex(), b64("(98123) 456-78"),
]


def _luhn(digits: str) -> int:
    """``digits`` with the Luhn check digit appended, as a number."""
    total = sum(int(d) if i % 2 else sum(divmod(2 * int(d), 10))
                for i, d in enumerate(reversed(digits)))
    return int(digits + str(-total % 10))


# Numbers a pattern finds as bare JSON numbers (where its loosened form ends past them)
_QUIET_NUMBERS = [_luhn("899100000000000000"), _luhn("89910000000000000"), _luhn("35693803564380")]


def _unhurried(classifier: Classifier) -> Classifier:
    """A copy of ``classifier`` without a time budget: a walk cut short by a busy
    machine (the suite's proxies, a first compile) must not look like a difference."""
    return Classifier(classifier.policy, classifier.device,
                      dataclasses.replace(classifier.limits, budget_ms=0), classifier.known)


def _walking_all(classifier: Classifier) -> Classifier:
    walker = _unhurried(classifier)
    walker._json_hot = lambda body: None  # type: ignore[method-assign]
    walker._form_hot = lambda body: None  # type: ignore[method-assign]
    return walker


def _exact(classifier: Classifier, exchange: Exchange) -> set[tuple[str, str, str, str, str]]:
    return {(f.field, f.data_type, f.encoding, f.match, f.value)
            for f in classifier.classify(exchange).findings}


def _documents():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    scalars = st.one_of(st.sampled_from(_QUIET_VALUES), st.sampled_from(_QUIET_NUMBERS),
                        st.integers(-10**16, 10**16),
                        st.floats(-200, 200, allow_nan=False), st.booleans(), st.none(),
                        st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(_QUIET_KEYS), st.text(max_size=8)), inner,
                        max_size=5)), max_leaves=25)


@pytest.mark.parametrize("skim_chars", [256, 0])  # 0: every hot container read child by child
def test_a_document_is_walked_where_a_walk_of_all_of_it_finds_something(
        classifier: Classifier, monkeypatch: pytest.MonkeyPatch, skim_chars: int) -> None:
    from hypothesis import HealthCheck, given, settings

    from leakmap.core import decode

    monkeypatch.setattr(decode, "_SKIM_CONTAINER_CHARS", skim_chars)
    classifier, walker = _unhurried(classifier), _walking_all(classifier)
    seen = {"quiet": 0, "partly": 0}

    @settings(max_examples=int(os.environ.get("LEAKMAP_QUIET_EXAMPLES", "400")), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_documents(), st_indent())
    def check(document: object, indent: int | None) -> None:
        body = json.dumps(document, indent=indent, ensure_ascii=indent is None).encode()
        exchange = request(body=body, headers=[("content-type", "application/json")])
        walked = _exact(walker, exchange)
        hot = classifier._json_hot(body)
        if hot == []:
            seen["quiet"] += 1
            assert walked == set(), body
        elif hot is not None and isinstance(document, dict | list):
            seen["partly"] += 1
        assert _exact(classifier, exchange) == walked

    check()
    assert seen["quiet"] and seen["partly"]  # the property was exercised both ways


def st_indent():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    return st.sampled_from([None, 0, 2])  # compact ASCII, or spaced out with raw UTF-8


@pytest.mark.parametrize("body", [
    '{"imei": "1", "imei": "865312345678901"}',  # a repeated name: json.loads keeps the last
    '\ufeff{"imei": "865312345678901"}',  # a byte order mark
    '{"imei": "865312345678901"} x',  # data after the document
    '{"imei": "865312345678901",}',  # a trailing comma
    '{"im\\u0065i": "12345", "n": "\u540d\u5b57", "p": "+91 98123 45678"}',
    '{"\u540d": ["\u540d", {"imei": 865312345678901}], "x": [1, 2, [3, "98123 45678"]]}',
    '[[[["865312345678901"]]], {"a": {"b": {"email": "someone@example.org"}}}]',
    '{"a": "%2B91%2098123%2045678", "b": "a=1&imei=865312345678901"}',
    '{"lat": 12.971599, "t": 1, "lon": 77.594566}',
    '  {  "contacts" : [ "x" , "y" , "+91 98123 45678" ] }  ',
    '{"nested": "{\\"imei\\": \\"865312345678901\\"}"}',
    '"865312345678901"', "865312345678901", "{}", "[]", '{"a": }', '{"a" 1}', "[1 2]",
])
def test_awkward_documents_give_the_findings_of_a_walk_of_all_of_them(
        classifier: Classifier, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    from leakmap.core import decode

    raw = body.encode()
    exchange = request(body=raw, headers=[("content-type", "application/json")])
    expected = _exact(_walking_all(classifier), exchange)
    for skim_chars in (256, 0):
        monkeypatch.setattr(decode, "_SKIM_CONTAINER_CHARS", skim_chars)
        assert _exact(_unhurried(classifier), exchange) == expected, skim_chars


def test_a_long_document_is_walked_only_where_it_holds_something(classifier: Classifier) -> None:
    events = [{"e": "click", "ts": 1407000000000 + n, "ref": f"{n:012x}"} for n in range(40)]
    document = {"imei": IMEI, "events": events, "contacts": ["x", "+91 98123 45678"]}
    body = json.dumps(document).encode()
    hot = _unhurried(classifier)
    collector = hot_leaves(hot, body)
    paths = {leaf.path for leaf in collector.leaves if leaf.path.startswith("request.body")}
    assert paths == {"request.body.json.imei", "request.body.json.contacts[0]",
                     "request.body.json.contacts[1]"}
    exchange = request(body=body, headers=[("content-type", "application/json")])
    assert _exact(hot, exchange) == _exact(_walking_all(classifier), exchange)
    assert {"request.body.json.imei", "request.body.json.contacts[1]"} <= {
        field for field, *_ in _exact(hot, exchange)}


def hot_leaves(classifier: Classifier, body: bytes):  # type: ignore[no-untyped-def]
    from leakmap.core.decode import exchange_leaves

    exchange = request(body=body, headers=[("content-type", "application/json")])
    return exchange_leaves(exchange, classifier.limits, None, None, classifier._json_hot,
                           classifier._form_hot)


_FORM_VALUES = [*(value for value in _QUIET_VALUES if value),
                "a%26b", "a%3Db", "%2541", "x+y", "%7B%22imei%22%3A1%7D", "98123%2045678",
                "%2B91%2098123%2045678", "caf%C3%A9", "%FF", "app_open%3A3a2b1c0d9e8f",
                quote("\n".join(b64('{"carrier": "Vodafone!"}')[i : i + 8] for i in range(0, 32, 8)),
                      safe="")]  # base64 with line breaks (no padding: an encoded "=" walks all)


def _forms():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    names = st.one_of(st.sampled_from([*_QUIET_KEYS, "k1", "q", "seq", "im%65i", "ph+one", "IMEI",
                                       "Lat", "Carrier_Name", "a%22b", "%E5%90%8D", "x%3Ay"]),
                      st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_%+", max_size=6))
    values = st.one_of(st.sampled_from(_FORM_VALUES),
                       st.text(alphabet="0123456789abcdefABCDEF:.%+-_=/", max_size=24))
    return st.lists(st.tuples(names, values), max_size=12)


def test_a_form_is_walked_where_a_walk_of_all_of_it_finds_something(
        classifier: Classifier) -> None:
    from hypothesis import HealthCheck, given, settings

    classifier, walker = _unhurried(classifier), _walking_all(classifier)
    seen = {"quiet": 0, "partly": 0, "whole": 0}

    @settings(max_examples=int(os.environ.get("LEAKMAP_FORM_EXAMPLES", "400")), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_forms())
    def check(pairs: list[tuple[str, str]]) -> None:
        body = "&".join(f"{name}={value}" for name, value in pairs).encode()
        exchange = request(body=body,
                           headers=[("content-type", "application/x-www-form-urlencoded")])
        walked = _exact(walker, exchange)
        hot = classifier._form_hot(body)
        if hot is None:
            seen["whole"] += 1
        elif not hot:
            seen["quiet"] += 1
            assert walked == set(), body
        else:
            seen["partly"] += 1
        assert _exact(classifier, exchange) == walked

    check()
    assert seen["quiet"] and seen["partly"] and seen["whole"]  # every way was exercised


@pytest.mark.parametrize("body", ["lat=12.971599&lon=77.594566", "ll=48.8584,2.2945",
                                  "latlng=12.971599%2C77.594566"])
def test_coordinates_under_a_location_name_keep_a_form_from_being_quiet(classifier, body) -> None:
    exchange = request(body=body.encode(),
                       headers=[("content-type", "application/x-www-form-urlencoded")])
    assert classifier._form_hot(body.encode())
    assert "location" in {data_type for _, data_type, _, _ in found(_unhurried(classifier),
                                                                      exchange)}


def test_form_names_a_data_type_is_named_by_are_found_at_once(classifier: Classifier) -> None:
    names = ["k1", "IMEI", "seq", "lat", "Carrier_Name", "x", "msisdn", "q", "device_id", "ll", ""]
    at_once = set(classifier._named_pairs(names))
    assert at_once == {index for index, name in enumerate(names) if classifier._named(name)}
    assert at_once == {1, 3, 4, 6, 8, 9}


# -- URL paths and headers that held nothing are not read again -----------------
# (Classifier._remember_quiet): a classifier that remembers must find what one that
# forgets finds, flow after flow.

_HEADER_VALUES = [*_QUIET_VALUES, "Dalvik/1.6.0 (Linux; U; Android 4.4.4; HM 1SW)",
                  "application/json", "1918", "28.6140", "77.2095", "12.50", b64("28.6140,77.2095")]


def _forgetful(classifier: Classifier) -> Classifier:
    forgetful = _unhurried(classifier)
    forgetful._known_quiet = {}  # type: ignore[assignment]  # emptied after every flow below
    return forgetful


@pytest.mark.parametrize("profile_text", [None, "location: {lat: 28.6139, lon: 77.2090}\n"])
def test_a_classifier_that_remembers_quiet_headers_finds_what_one_that_forgets_finds(
        tmp_path: Path, profile_text: str | None) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    device = SAMPLES / "redmi-1s.yaml"
    if profile_text is not None:
        device = tmp_path / "located.yaml"
        device.write_text(profile_text)
    remembering = _unhurried(Classifier(load_policy(), load_device(device)))
    forgetful = _forgetful(remembering)
    names = st.sampled_from(["User-Agent", "X-Imei", "X-Geo-Lat", "X-Geo-Lon", "Lat", "Lng", "X-Acc",
                             "Authorization", "X-Carrier", "Content-Length"])
    flows = st.lists(st.tuples(st.sampled_from(["/v2/stat", "/u/" + IMEI, "/p/28.6140"]),
                               st.lists(st.tuples(names, st.sampled_from(_HEADER_VALUES)),
                                        max_size=5)), min_size=2, max_size=6)

    @settings(max_examples=int(os.environ.get("LEAKMAP_QUIET_EXAMPLES", "400")) // 4,
              deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(flows)
    def check(sequence: list[tuple[str, list[tuple[str, str]]]]) -> None:
        for path, headers in sequence * 2:  # the second time round, much is remembered
            exchange = request(url=f"https://h.cn{path}", headers=headers)
            assert _exact(remembering, exchange) == _exact(forgetful, exchange), (path, headers)
            forgetful._known_quiet.clear()  # type: ignore[attr-defined]

    check()
    assert remembering._known_quiet  # the memory was used


def test_remembered_headers_are_not_read_again(classifier: Classifier) -> None:
    from leakmap.core.decode import exchange_leaves

    remembering = _unhurried(classifier)
    agent = ("User-Agent", "Dalvik/1.6.0 (Linux; U; Android 4.4.4; HM 1SW)")
    exchange = request(url="https://h.cn/v2/stat", headers=[agent, ("X-Imei", IMEI),
                                                            ("X-Token", b64("hello there"))])
    assert "request.headers.x-imei" in {field for field, *_ in _exact(remembering, exchange)}
    again = exchange_leaves(exchange, remembering.limits, known_quiet=remembering._known_quiet)
    # the IMEI (a finding) and the token (it decodes) are read again; the rest is not
    assert {leaf.path for leaf in again.leaves} == {"request.headers.x-imei",
                                                    "request.headers.x-token"}


def test_a_remembered_header_still_spends_the_leaf_budget(classifier: Classifier) -> None:
    limits = dataclasses.replace(classifier.limits, budget_ms=0, max_leaves=4)
    remembering = Classifier(classifier.policy, classifier.device, limits, classifier.known)
    fresh = Classifier(classifier.policy, classifier.device, limits, classifier.known)
    headers = [("User-Agent", "Dalvik/1.6.0"), ("Accept", "*/*")]
    remembering.classify(request(url="https://h.cn/v2/stat", headers=headers))
    # the URL's host (no Host header: read as HTTP/2's :authority), the path, both headers
    assert len(remembering._known_quiet) == 4
    body = json.dumps({"a": "x", "imei": IMEI}).encode()
    exchange = request(url="https://h.cn/v2/stat", body=body, headers=headers)
    expected = fresh.classify(exchange)  # the 4 places fill the budget: the body is not read
    # ... and only the last pass over the request as it came finds the IMEI in it
    assert expected.truncated and [f.field for f in expected.findings] == ["request.unread"]
    assert remembering.classify(exchange) == expected
