"""Hostile payloads: the decoder and the classifier never raise, hang or balloon memory.

Every case of ``corpus.py`` goes through the real classifier with the shipped
policy and the sample device; the problem it provokes must be in the flow's
errors and a value planted in it must be found (or the limit that hid it
noted).  Hypothesis then throws arbitrary bytes, text and content types at
the decoder.  Last, the corpus goes through ``leakmap analyze`` and every flow
must reach the database with its analysis error.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import os
import random
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, quote

import brotli
import corpus
import hypothesis
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakmap.core import protobuf
from leakmap.core.classify import Analysis, Classifier
from leakmap.core.decode import (
    Collector,
    Limits,
    _windows,
    decode_body,
    decode_payload,
    decompress,
    exchange_leaves,
    expand_text,
    form_pairs,
)
from leakmap.core.device import load_device
from leakmap.core.exchange import Exchange, Message
from leakmap.core.har import read_har
from leakmap.policies.model import load_policy

from conftest import SAMPLES, leakmap_cli

IMEI = corpus.IMEI
CAP = Limits().max_decoded_bytes

# The problems each case must leave in ``errors`` (substrings); () means none at all.
EXPECTED: dict[str, tuple[str, ...]] = {
    "gzip-bomb": ("decompression limit hit: gzip",),
    "deflate-bomb": ("decompression limit hit: deflate",),
    "br-bomb": ("decompression limit hit: br",),
    "zstd-bomb": ("decompression limit hit: zstd",),
    "gzip-gzip-bomb": ("decompression limit hit: gzip",),
    "gzip-two-members": (),
    "bad-gzip": ("decoder error: gzip body does not decode",),
    "unknown-encoding": ("unknown content-encoding 'compress'",),
    "wide-json": ("JSON with about", "values, more than 250000: scanned as text"),
    "wide-xml": ("XML with about", "values, more than 250000: scanned as text"),
    "wide-protobuf": ("protobuf with more than 50000 fields: the rest not read",),
    "deep-json": ("JSON nested too deeply",),
    "deep-json-object": ("JSON nested too deeply",),
    "deep-parsable-json": ("structure deeper than 64: the deeper values read under one path",),
    "json-in-json-strings": ("nesting deeper than 6 not followed",),
    "json-in-json-deep": ("nesting deeper than 6 not followed",),
    "long-number": (),
    "long-token": (),
    "nested-base64": (),
    "shallow-base64": (),
    "invalid-utf8": ("malformed JSON",),
    "invalid-utf8-text": (),
    "truncated-json": ("malformed JSON",),
    "malformed-json": ("malformed JSON",),
    "protobuf-lying-lengths": ("protobuf body does not parse",),
    "protobuf-deep": ("protobuf nested deeper than 64",),
    "multipart-no-boundary": ("multipart body without a boundary",),
    "multipart-broken": ("multipart body does not parse",),
    "multipart-bad-charset": ("multipart part 0 does not parse (ValueError)",),
    "multipart-many-parts": (),
    "multipart-too-many-parts": ("multipart body with about 20002 parts, more than 10000",),
    "multipart-huge-header": ("multipart part headers of 500020 characters: scanned as text",),
    "billion-laughs": ("malformed XML: EntitiesForbidden",),
    "xml-external-entity": ("malformed XML: EntitiesForbidden",),
    "deep-xml": ("structure deeper than 64: the deeper values read under one path",),
    "binary-junk": (),
    "binary-junk-grpc": ("protobuf body does not parse",),
    "form-bomb": ("leaf budget of 50000 values exhausted",),
    "many-headers": (),
    "script-header": (),
    "websocket-many-messages": (),
    "websocket-huge-message": ("only the first 16777216 scanned",),
    "no-response": (),
    "big-body": ("bytes: only the first 16777216 scanned", "JSON with about"),
}
# Where the IMEI is planted: "found" (it must be), or the note of the limit that
# may hide it (then it is found or that note is there).
PLANTED: dict[str, str] = {
    **dict.fromkeys([
        "gzip-two-members", "bad-gzip", "unknown-encoding", "deep-json-object",
        "json-in-json-strings", "json-in-json-deep", "long-number",
        "long-token", "shallow-base64", "invalid-utf8", "invalid-utf8-text", "truncated-json",
        "malformed-json", "protobuf-lying-lengths", "protobuf-deep", "multipart-no-boundary",
        "multipart-broken", "multipart-bad-charset", "multipart-many-parts", "many-headers",
        "script-header", "websocket-many-messages", "websocket-huge-message", "no-response",
        "multipart-too-many-parts", "multipart-huge-header", "wide-json", "wide-xml",
        "wide-protobuf",
        "deep-parsable-json",  # the IMEI sits 500 objects deep
        "deep-xml",  # 100,000 elements deep
        "nested-base64",  # 40 layers of base64
    ], "found"),
}
TRUNCATED = {"gzip-bomb", "deflate-bomb", "br-bomb", "zstd-bomb", "gzip-gzip-bomb", "form-bomb",
             "websocket-huge-message", "wide-protobuf", "big-body"}
BOMBS = ("gzip-bomb", "deflate-bomb", "br-bomb", "zstd-bomb", "gzip-gzip-bomb")


# These tests check what each decoder notes (caps, limits, errors); the wall-clock
# budget, whose note depends on the machine's load, is tested in test_budget.py.
NO_TIME_BUDGET = Limits(budget_ms=600_000)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(load_policy(), load_device(SAMPLES / "redmi-1s.yaml"), NO_TIME_BUDGET)


def imei_found(analysis: Analysis) -> bool:
    return any(f.data_type == "imei" and f.match == "known" and f.value == IMEI
               for f in analysis.findings)


def check(name: str, analysis: Analysis) -> None:
    assert not any(e.startswith(("decoder failed", "decoder error: nesting", "classifier error"))
                   for e in analysis.errors), (name, analysis.errors)
    expected = EXPECTED[name]
    if not expected:
        assert analysis.errors == [], name
    for problem in expected:
        assert any(problem in error for error in analysis.errors), (name, analysis.errors)
    planted = PLANTED.get(name)
    if planted == "found":
        assert imei_found(analysis), (name, analysis.findings)
    elif planted is not None:
        assert imei_found(analysis) or any(planted in e for e in analysis.errors), name
    assert analysis.truncated == (name in TRUNCATED), name


def test_every_case_has_an_expectation() -> None:
    names = [make.__name__[5:].replace("_", "-") for make in corpus.CASES]
    assert len(names) == len(set(names))
    assert set(EXPECTED) == {*names, "big-body"}
    assert set(PLANTED) <= set(EXPECTED)


# --------------------------------------------------------------------------
# The corpus, case by case, through the real classifier.


@pytest.mark.parametrize("make", corpus.CASES, ids=lambda make: make.__name__[5:])
def test_hostile_case_is_analysed_and_its_problem_recorded(classifier, make) -> None:
    name, exchange = make()
    assert name == make.__name__[5:].replace("_", "-")
    analysis = classifier.classify(exchange)  # must return: no exception, no hang
    check(name, analysis)


def test_100_megabyte_body_is_cut_and_still_scanned(classifier) -> None:
    name, exchange = corpus.case_big_body()
    assert len(exchange.request_body) > 100_000_000
    analysis = classifier.classify(exchange)
    check(name, analysis)


def test_malformed_url_is_noted_and_scanned_as_text(classifier) -> None:
    exchange = corpus.request("bad-url", url=f"https://[::1/x?imei={IMEI}")
    analysis = classifier.classify(exchange)
    assert any(e.startswith("malformed URL") for e in analysis.errors), analysis.errors
    assert imei_found(analysis)


def test_websocket_messages_share_one_budget(classifier) -> None:
    limits = Limits(max_body_bytes=1000, max_decoded_bytes=5000)
    messages = [Message(True, b"x" * 900 + b" " + IMEI.encode()) for _ in range(4)]
    messages += [Message(True, b"y" * 1500), Message(True, IMEI.encode() + b" " + b"z" * 900)]
    exchange = corpus.request("ws", kind="websocket", messages=messages)
    collector = exchange_leaves(exchange, limits)
    assert collector.truncated
    assert "message 4 of 1500 bytes: only the first 1000 scanned" in collector.errors
    assert "messages beyond 5000 bytes not scanned" in collector.errors
    scanned = {leaf.path.split(".")[1] for leaf in collector.leaves if leaf.path.startswith("web")}
    assert scanned == {f"messages[{i}]" for i in range(6)}  # the last one in part


MEMORY_BOMBS = {
    **{name: (lambda name=name: corpus.case(name)) for name in BOMBS},
    # full size: parsed whole, each would take about 1 GB
    "wide-json-30MB": lambda: corpus.case_wide_json(10_000_000),
    "wide-xml-16MB": lambda: corpus.case_wide_xml(4_000_000),
    "wide-protobuf-16MB": lambda: corpus.case_wide_protobuf(8_000_000),
    "form-16MB": lambda: ("form", corpus.request("form", b"a=1&" * (4 * 2**20),
                                                  "application/x-www-form-urlencoded")),
    # urllib's unquote splits a text at every "%" at once: 350 MB for this value
    "percent-16MB": lambda: ("percent", corpus.request("percent", b"a=1&d=" + b"%25" * 5_600_000,
                                                       "application/x-www-form-urlencoded")),
}


@pytest.mark.parametrize("name", MEMORY_BOMBS)
def test_decoding_memory_stays_within_a_few_times_the_cap(name: str) -> None:
    _, exchange = MEMORY_BOMBS[name]()
    tracemalloc.start()
    try:
        collector = exchange_leaves(exchange)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert collector.errors
    # the capped body as bytes, a copy and as text: about 3x; parsing it whole would be 30x
    assert peak < 4 * CAP, f"{name}: peak {peak / 2**20:.0f} MiB for a {CAP / 2**20:.0f} MiB cap"


def _percent_chain(size: int, compressed: bool) -> bytes:
    """A JSON body whose value is the IMEI percent-encoded 61 times (each layer only two
    characters shorter), padded to ``size``; as base64 of its gzip if ``compressed``."""
    inner = "%" + "25" * 60 + "38" + IMEI[1:]
    inner += " " * (size - len(inner))
    value = base64.b64encode(gzip.compress(inner.encode(), 9)).decode() if compressed else inner
    return json.dumps({"a": value}).encode()


@pytest.mark.parametrize(("size", "compressed"), [(8 << 20, False), (CAP - 200, True)])
def test_a_chain_that_hardly_shortens_its_value_is_undone_within_a_budget(
        size: int, compressed: bool) -> None:
    """Each layer replaces the one before (one copy alive, not 61), and all of them together
    are charged to the flow's max_unwrapped_chars: bounded memory and time, and said so."""
    exchange = corpus.request("chain", _percent_chain(size, compressed), "application/json")
    tracemalloc.start()
    try:
        collector = exchange_leaves(exchange, Limits(budget_ms=0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"values decoded past {Limits().max_unwrapped_chars} characters in all: the rest " \
        "not decoded" in collector.errors
    # the inflated bytes, their copy and text, two layers: five times the cap (61 copies: 2 GB)
    assert peak < 6 * CAP, f"peak {peak / 2**20:.0f} MiB"


def test_a_small_chain_of_percent_encodings_is_undone_to_its_end(classifier) -> None:
    analysis = classifier.classify(corpus.request("chain", _percent_chain(4096, True),
                                                  "application/json"))
    assert imei_found(analysis) and not analysis.errors


@pytest.mark.parametrize(("encoding", "bomb"), [
    ("gzip", corpus.gzip_bomb), ("deflate", corpus.zlib_bomb), ("br", corpus.brotli_bomb),
    ("zstd", corpus.zstd_bomb),
])
def test_bombs_are_small_and_expand_past_the_cap(encoding: str, bomb) -> None:
    data = bomb()
    assert len(data) < 2 * 2**20
    out, hit_cap = decompress(data, encoding, 4 * CAP)
    assert hit_cap and out == bytes(4 * CAP)
    if encoding == "gzip":  # the trailer gives the whole size: 1 GiB mod 2**32
        assert int.from_bytes(data[-4:], "little") == corpus.BOMB_SIZE


# --------------------------------------------------------------------------
# Properties: nothing escapes, whatever comes in.

CONTENT_TYPES = [
    "", "application/json", "application/json; charset=utf-8", "text/plain", "text/html",
    "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=b",
    "multipart/mixed; boundary=\"a b\"", "application/xml", "text/xml", "application/x-protobuf",
    "application/grpc", "application/octet-stream", "image/png", "application/vnd.api+json",
]
ENCODINGS = ["gzip", "x-gzip", "deflate", "br", "zstd", "identity", "gzip, br", "compress", "",
             " , gzip", "GZIP", "br, br"]
SMALL = Limits(max_body_bytes=4096, max_decoded_bytes=2048, max_depth=3, max_structure_depth=4,
               max_leaves=40, min_blob_length=4, max_leaf_chars=64, leaf_overlap=16,
               max_errors=5)
# LEAKMAP_HOSTILE_EXAMPLES=20000 for a long fuzzing run
HYPOTHESIS = settings(max_examples=int(os.environ.get("LEAKMAP_HOSTILE_EXAMPLES", "200")),
                      deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    text = json.dumps(draw(json_values))
    if draw(st.booleans()):  # truncated, or with junk spliced in
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=5))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def protobuf_messages(draw: st.DrawFn, depth: int = 0) -> bytes:
    out = bytearray()
    for _ in range(draw(st.integers(0, 4))):
        number = draw(st.integers(1, 2**29 - 1))
        wire = draw(st.sampled_from([0, 1, 2, 5]) if depth < 3 else st.sampled_from([0, 1, 5]))
        out += _pb_varint(number << 3 | wire)
        if wire == 0:
            out += _pb_varint(draw(st.integers(0, 2**64 - 1)))
        elif wire in (1, 5):
            out += draw(st.binary(min_size=8 if wire == 1 else 4, max_size=8 if wire == 1 else 4))
        else:
            inner = draw(st.one_of(st.binary(max_size=40), st.text(max_size=20).map(str.encode),
                                   protobuf_messages(depth + 1)))
            out += _pb_varint(len(inner)) + inner
    if draw(st.booleans()):  # lie about something
        out = bytearray(draw(st.binary(max_size=3))) + out[: draw(st.integers(0, len(out)))]
    return bytes(out)


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b", "XyZ", "----x", "a b"]) | st.text(max_size=10))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        headers = draw(st.lists(st.text(max_size=40), max_size=3))
        name = draw(st.text(max_size=10))
        head = f'Content-Disposition: form-data; name="{name}"\r\n' + "\r\n".join(headers)
        payload = draw(st.binary(max_size=60) | json_bodies())
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode("utf-8", "surrogatepass") + payload)
    body = b"\r\n".join(parts) + (f"\r\n--{boundary}--\r\n".encode("utf-8", "surrogatepass")
                                  if draw(st.booleans()) else b"")
    content_type = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}",
                                         f'multipart/form-data; boundary="{boundary}"',
                                         "multipart/form-data", "multipart/related; boundary*=x"]))
    return body, content_type


text_bodies = st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
xml_bodies = st.builds(
    lambda tag, attr, text: f'<?xml version="1.0"?><{tag} a="{attr}">{text}</{tag}>'.encode(
        "utf-8", "surrogatepass"),
    st.sampled_from(["r", "x:y", "a-b"]), st.text(max_size=20), st.text(max_size=40),
)
form_bodies = st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=6).map(
    lambda pairs: "&".join(f"{quote(k)}={v}" for k, v in pairs).encode("utf-8", "surrogatepass"))

payloads = st.one_of(
    st.tuples(st.binary(max_size=600), st.sampled_from(CONTENT_TYPES) | st.text(max_size=40)),
    st.tuples(json_bodies(), st.sampled_from(CONTENT_TYPES)),
    st.tuples(protobuf_messages(), st.sampled_from(["application/x-protobuf", "", "text/plain"])),
    multipart_bodies(),
    st.tuples(xml_bodies | text_bodies, st.sampled_from(CONTENT_TYPES)),
    st.tuples(form_bodies, st.sampled_from(CONTENT_TYPES)),
)


def encode(body: bytes, encoding: str) -> bytes:
    """``body`` with ``encoding`` applied for real (outermost last), where it can be."""
    for name in [e.strip().lower() for e in encoding.split(",") if e.strip()]:
        if name in ("gzip", "x-gzip"):
            body = gzip.compress(body, mtime=0)
        elif name == "deflate":
            body = zlib.compress(body)
        elif name == "br":
            body = brotli.compress(body)
        elif name == "zstd":
            body = zstandard.ZstdCompressor().compress(body)
    return body


@st.composite
def encoded_payloads(draw: st.DrawFn) -> tuple[bytes, str | None, str | None]:
    body, content_type = draw(payloads)
    encoding = draw(st.none() | st.sampled_from(ENCODINGS) | st.text(max_size=12))
    if encoding and draw(st.booleans()):
        body = encode(body, encoding)
        if draw(st.booleans()):  # and then damaged
            body = body[: draw(st.integers(0, len(body)))]
    return body, content_type, encoding


def bounded(collector: Collector) -> None:
    limits = collector.limits
    assert not any(e.startswith(("decoder failed", "decoder error: nesting")) for e in collector.errors)
    assert len(collector.leaves) <= limits.max_leaves
    assert len(collector.errors) <= limits.max_errors + 1
    assert all(isinstance(leaf.value, str) for leaf in collector.leaves)
    assert all(len(leaf.value) <= limits.max_leaf_chars + 128 for leaf in collector.leaves)


@HYPOTHESIS
@given(encoded_payloads(), st.sampled_from([Limits(), SMALL]))
def test_decode_body_never_raises(payload, limits: Limits) -> None:
    body, content_type, encoding = payload
    collector = Collector(limits)
    decode_body(collector, "request.body", body, content_type, encoding)
    decode_payload(collector, "request.raw", body, content_type or "")
    bounded(collector)


headers = st.lists(st.tuples(st.text(max_size=20), st.text(max_size=60)), max_size=6)
messages = st.lists(st.builds(Message, st.booleans(), st.binary(max_size=100) | json_bodies(),
                              st.booleans()), max_size=4)


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    body, content_type, encoding = draw(encoded_payloads())
    request_headers = draw(headers)
    if content_type is not None:
        request_headers.append(("Content-Type", content_type))
    if encoding is not None:
        request_headers.append(("Content-Encoding", encoding))
    return Exchange(
        flow_id="h", kind=draw(st.sampled_from(["http", "websocket", "tcp", "udp", "dns", "tls"])),
        timestamp=0.0, url=draw(st.none() | st.text(max_size=80)
                                | st.text(max_size=40).map(lambda t: f"https://h.cn/p?{t}")),
        request_headers=request_headers, request_body=body,
        request_body_truncated=draw(st.booleans()), messages=draw(messages),
        dns_question=draw(st.none() | st.text(max_size=40)),
    )


@HYPOTHESIS
@given(exchanges())
def test_exchange_leaves_and_classify_never_raise(classifier, exchange: Exchange) -> None:
    bounded(exchange_leaves(exchange, SMALL))
    analysis = classifier.classify(exchange)
    assert isinstance(analysis.errors, list)
    assert not any(e.startswith(("classifier error", "decoder failed")) for e in analysis.errors)


def _wrapped(text: str, layers: list[str]) -> str:
    for layer in layers:
        raw = text.encode("utf-8", "surrogatepass")
        if layer == "base64":
            text = base64.b64encode(raw).decode()
        elif layer == "hex":
            text = raw.hex()
        elif layer == "url":
            text = quote(text, safe="")
        else:
            text = json.dumps({"v": text})
    return text


def _packed(text: str, layers: list[str]) -> str:
    """``text`` in ``layers`` (innermost first): those of :func:`_wrapped`, character
    references, ``\\u`` escapes, and compressed streams in base64 or hex, as apps send them."""
    for layer in layers:
        raw = text.encode("utf-8", "surrogatepass")
        if layer == "html":
            text = "".join(f"&#{ord(ch)};" for ch in text)
        elif layer == "escape":  # as code writes it, outside a JSON string
            text = "".join(f"\\u{ord(ch):04x}" for ch in text)
        elif layer == "gzip-base64":
            text = base64.b64encode(gzip.compress(raw)).decode()
        elif layer == "zlib-base64url":
            text = base64.urlsafe_b64encode(zlib.compress(raw)).decode().rstrip("=")
        elif layer == "zstd-hex":
            text = zstandard.ZstdCompressor().compress(raw).hex()
        else:
            text = _wrapped(text, [layer])
    return text


PACKINGS = ["base64", "hex", "url", "json", "html", "escape", "gzip-base64", "zlib-base64url",
            "zstd-hex"]


@HYPOTHESIS
@given(st.lists(st.sampled_from(PACKINGS), max_size=12), st.booleans())
def test_a_value_in_any_chain_of_encodings_is_found(classifier, layers: list[str],
                                                     as_document: bool) -> None:
    """Up to 12 encodings, documents and compressions, in any order: the IMEI inside is
    found as the known value (within the limits: at most 5 documents, at most 2 MB sent),
    unless what they decode to passes the flow's decoded bytes or leaves, as noted."""
    hypothesis.assume(layers.count("json") <= 5)
    inner = json.dumps({"imei": IMEI}) if as_document else IMEI
    wrapped = _packed(inner, layers)
    hypothesis.assume(len(wrapped) <= 2_000_000)
    analysis = classifier.classify(corpus.request(
        "chain", json.dumps({"d": wrapped}).encode(), "application/json"))
    limited = any(note.startswith(("decompression limit hit", "leaf budget"))
                  for note in analysis.errors)
    assert imei_found(analysis) or limited, (layers, analysis.errors)


@HYPOTHESIS
@given(st.text(max_size=400) | st.builds(
    _wrapped, st.text(max_size=40),
    st.lists(st.sampled_from(["base64", "hex", "url", "json"]), max_size=10)),
    st.sampled_from([Limits(), SMALL]))
def test_expand_text_never_raises(text: str, limits: Limits) -> None:
    collector = Collector(limits)
    expand_text(collector, "x", text)
    bounded(collector)


@HYPOTHESIS
@given(st.text(alphabet="ab=&%+2F1;", max_size=40) | st.text(max_size=40))
def test_form_pairs_are_parse_qsl_with_values(text: str) -> None:
    assert list(form_pairs(text)) == [p for p in parse_qsl(text, keep_blank_values=True) if p[1]]


_BLOBBY = "0123456789abcdefABCDEF+/-_=xyZ\n %\u00e9"


@HYPOTHESIS
@given(st.text(alphabet=_BLOBBY, max_size=40) | st.text(max_size=40))
def test_hex_and_base64_tests_are_the_regular_expressions(text: str) -> None:
    from leakmap.core.decode import _BASE64, _HEX, _is_base64, _is_hex

    assert _is_hex(text) == bool(_HEX.fullmatch(text))
    assert _is_base64(text) == bool(_BASE64.fullmatch(text))


@HYPOTHESIS
@given(st.text(alphabet=_BLOBBY, max_size=40) | st.text(max_size=40))
def test_base64_bytes_is_b64decode_with_validation(text: str) -> None:
    import base64
    import binascii

    from leakmap.core.decode import base64_bytes

    stripped = text.rstrip("=")
    try:
        expected = None if len(stripped) % 4 == 1 else base64.b64decode(
            stripped + "=" * (-len(stripped) % 4), validate=True,
            altchars=b"-_" if ("-" in stripped or "_" in stripped) else None)
    except (binascii.Error, ValueError):
        expected = None
    assert base64_bytes(text) == expected


def _blob_texts():  # type: ignore[no-untyped-def]
    """Ids and tokens as a body holds them: hex and base64 of random bytes, of text, of
    UTF-8 in several scripts, some with padding or of the URL-safe alphabet."""
    import base64

    raw = st.one_of(st.binary(min_size=4, max_size=40),
                    st.text(min_size=2, max_size=30).map(lambda text: text.encode()),
                    st.sampled_from(["caf\u00e9 \u540d\u5b57 \U0001f600", "hello there!\x01",
                                     # 12 and 18 bytes: whole groups as hex and as base64,
                                     # decoded in the batch, not one by one
                                     "hello world!", "caf\u00e9 \u540d\u5b57 \U0001f600a"])
                    .map(lambda text: text.encode()))
    encoders = st.sampled_from([bytes.hex, lambda b: b.hex().upper(),
                                lambda b: base64.b64encode(b).decode(),
                                lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="),
                                lambda b: base64.b64encode(b).decode().rstrip("=")])
    encoded = st.builds(lambda encode, data: encode(data), encoders, raw)
    wrapped = encoded.map(lambda text: "\n".join(text[i : i + 8] for i in range(0, len(text), 8)))
    return st.lists(encoded | wrapped | st.text(alphabet="0123456789abcdefABXYZ+/=_-%\r\n",
                                                max_size=30), max_size=30)


@HYPOTHESIS
@given(_blob_texts(), st.sampled_from([4, 12, 16]))
def test_unwrapping_is_unwraps_of_each(texts: list[str], min_blob: int) -> None:
    from leakmap.core.decode import unwrapping, unwraps

    assert unwrapping(texts, min_blob) == {text for text in texts if unwraps(text, min_blob)}


@pytest.mark.parametrize("encode", [bytes.hex, lambda raw: base64.b64encode(raw).decode()])
def test_unwrapping_finds_one_text_among_a_hundred_ids(encode: Callable[[bytes], str]) -> None:
    """A form of contacts' ids: a hundred whole-group hex texts decoded in one batch; the
    one that is text must be named wherever it sits (offsets drift further at the end)."""
    from leakmap.core.decode import unwrapping, unwraps

    rng = random.Random(7)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(100)]
    encoded = encode(b"hello world!")
    for position in (0, 50, 100):
        texts = [*ids[:position], encoded, *ids[position:]]
        found = unwrapping(texts, 12)
        assert encoded in found
        assert found == {text for text in texts if unwraps(text, 12)}


@HYPOTHESIS
@given(st.binary(max_size=300) | protobuf_messages(), st.integers(0, 70))
def test_protobuf_parse_never_raises(data: bytes, max_depth: int) -> None:
    notes: list[str] = []
    fields = protobuf.parse(data, max_depth, notes)
    assert fields is None or all(
        isinstance(path, str) and isinstance(value, str | int | float) for path, value in fields
    )


@HYPOTHESIS
@given(st.binary(max_size=3000), st.sampled_from(["gzip", "deflate", "br", "zstd"]),
       st.integers(0, 4000))
def test_decompress_gives_the_capped_prefix(original: bytes, encoding: str, cap: int) -> None:
    decoded, hit_cap = decompress(encode(original, encoding), encoding, cap)
    assert decoded == original[:cap]
    assert hit_cap == (len(original) > cap)


@HYPOTHESIS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=3), st.integers(0, 2500))
def test_every_gzip_member_is_read(original: bytes, cuts: list[int], cap: int) -> None:
    edges = [0, *sorted(cuts), len(original)]
    members = b"".join(gzip.compress(original[a:b], mtime=0) for a, b in itertools.pairwise(edges))
    decoded, hit_cap = decompress(members, "gzip", cap)
    assert decoded == original[:cap]
    assert hit_cap == (len(original) > cap)


@HYPOTHESIS
@given(st.binary(max_size=300) | protobuf_messages(), st.integers(0, 70), st.integers(0, 20))
def test_protobuf_field_budget_is_kept(data: bytes, max_depth: int, max_fields: int) -> None:
    notes: list[str] = []
    fields = protobuf.parse(data, max_depth, notes, max_fields)
    if fields is not None and not any("deeper" in note for note in notes):
        assert len(fields) <= max_fields


@HYPOTHESIS
@given(st.text(alphabet="0123456789abcdef -/", max_size=3000), st.integers(8, 200),
       st.data())
def test_windows_cover_every_short_value(text: str, size: int, data: st.DataObject) -> None:
    overlap = data.draw(st.integers(0, size // 2))
    windows = list(_windows(text, size, overlap))
    assert all(len(w) <= size + 128 for w in windows)
    assert len(windows) <= 1 + 2 * len(text) // size
    length = data.draw(st.integers(0, min(overlap, len(text))))
    start = data.draw(st.integers(0, len(text) - length))
    assert any(text[start : start + length] in w for w in windows)


# --------------------------------------------------------------------------
# The whole corpus through ``leakmap analyze`` into a database.

# HAR bodies are stored decoded, so the HAR reader may drop Content-Encoding:
# then a bomb arrives as compressed bytes its JSON content type does not fit.
WITHOUT_ENCODING = {
    **dict.fromkeys(BOMBS, ("malformed JSON",)),
    "wide-json": ("malformed JSON",),
    "gzip-two-members": ("malformed JSON",),
    "bad-gzip": (),
    "unknown-encoding": (),
}
ENCODED = set(WITHOUT_ENCODING)
NEEDS_DECODING = {"gzip-two-members", "wide-json"}  # the IMEI is only in the decoded body


def test_leakmap_analyze_logs_every_hostile_flow(tmp_path: Path, device_file: Path) -> None:
    cases = list(corpus.all_cases())
    har, flows = tmp_path / "hostile.har", tmp_path / "hostile.flow"
    corpus.write_har(cases, har)
    # the flow file keeps Content-Encoding: the bombs stay bombs
    corpus.write_flows([(n, e) for n, e in cases if n in ENCODED], flows)
    db = f"sqlite:///{tmp_path / 'hostile.db'}"
    leakmap_cli("analyze", str(har), str(flows), "--device", str(device_file), "--db", db,
                "--run-name", "hostile", "--analysis-budget-ms", str(NO_TIME_BUDGET.budget_ms))
    report = json.loads(
        leakmap_cli("report", "--db", db, "--run", "hostile", "--format", "json").stdout
    )
    rows = {row["flow_id"]: row for row in report["flows"]}
    imei_flows = {f["flow_id"] for f in report["findings"] if f["data_type"] == "imei"}
    assert len(report["flows"]) == len(cases) + len(ENCODED)

    logged = []  # (name, flow id, the problems expected, whether the IMEI must be found)
    for (name, _), read in zip(cases, read_har(har), strict=True):
        if name in ENCODED and read.header("content-encoding") is None:
            logged.append((name, read.flow_id, WITHOUT_ENCODING[name], name not in NEEDS_DECODING))
        else:
            logged.append((name, read.flow_id, EXPECTED[name], True))
    logged += [(name, exchange.flow_id, EXPECTED[name], True) for name, exchange in cases
               if name in ENCODED]
    for name, flow_id, expected, findable in logged:
        row = rows[flow_id]
        assert row["url"].split("?")[0].endswith("/" + name), (name, row["url"])
        error = row["analysis_error"]
        if expected:
            assert error is not None, name
            for problem in expected:
                assert problem in error, (name, error)
        else:
            assert error is None, (name, error)
        if PLANTED.get(name) == "found" and findable:
            assert flow_id in imei_flows, name
    kinds = {rows[flow_id]["kind"] for _, flow_id, _, _ in logged}
    assert kinds == {"http", "websocket"}
    no_response = [rows[i] for n, i, _, _ in logged if n == "no-response"]
    assert all(row["status_code"] is None for row in no_response)


def test_har_writer_round_trips_bodies(tmp_path: Path) -> None:
    cases = [corpus.case_invalid_utf8(), corpus.case_binary_junk(), corpus.case_truncated_json(),
             corpus.case_websocket_many_messages()]
    path = tmp_path / "x.har"
    corpus.write_har(cases, path)
    for (_, original), read in zip(cases, read_har(path), strict=True):
        assert read.request_body == original.request_body
        assert [m.content for m in read.messages] == [m.content for m in original.messages]


@HYPOTHESIS
@given(st.lists(st.sampled_from([b"a" * 21, b"Zz09+/_=-" * 3, b"-", b"\x00", b" ", b"\xff",
                                 b"q" * 22, b'"', b"A" * 40]), max_size=12).map(b"".join)
       | st.binary(max_size=200))
def test_base64_runs_are_the_maximal_runs_of_22_or_more(data: bytes) -> None:
    import re

    from leakmap.core.known import base64_runs

    expected = [m.span() for m in re.finditer(rb"[A-Za-z0-9+/_=-]{22,}", data)]
    assert list(base64_runs(data)) == expected


_DIGEST_PIECES = [b"a" * 21, b"Zz09+/_=-" * 3, b"-", b"\x00", b" ", b"=", b"==", b"===",
                  b"0123456789abcdef" * 2, b"0123456789ABCDEF" * 4, b"deadbeef" * 5, b"x"]
for _size in (16, 20, 32):
    _digest = bytes(range(_size))
    _DIGEST_PIECES += [base64.b64encode(_digest), base64.urlsafe_b64encode(_digest).rstrip(b"="),
                       base64.b64encode(_digest.hex().encode()), _digest.hex().encode()]


def _digest_tokens_by_regex(data: bytes) -> list[tuple[int, bytes, str]]:
    """What digest_spans must find, said with regular expressions: every maximal run of
    exactly 32, 40 or 64 hex digits; the last ``=``-separated part of every maximal run
    of 22 or more base64 characters, with at most two ``=`` after it, that decodes to a
    digest or to its hex."""
    import re

    tokens = [(m.end(), bytes.fromhex(m.group().decode()), "")
              for m in re.finditer(rb"[0-9A-Fa-f]+", data) if len(m.group()) in (32, 40, 64)]
    for run in re.finditer(rb"[A-Za-z0-9+/_=-]{22,}", data):
        shape = re.fullmatch(rb"(?:.*=)?([A-Za-z0-9+/_-]+)(=?=?)", run.group(), re.DOTALL)
        if shape is None:
            continue
        core = shape.group(1).replace(b"-", b"+").replace(b"_", b"/")
        try:
            raw = base64.b64decode(core + b"=" * (-len(core) % 4), validate=True)
        except ValueError:
            continue
        if len(raw) in (16, 20, 32):
            tokens.append((run.end(), raw, "base64"))
        elif len(raw) in (32, 40, 64) and re.fullmatch(rb"[0-9A-Fa-f]+", raw):
            tokens.append((run.end(), bytes.fromhex(raw.decode()), "base64"))
    return sorted(tokens)


@HYPOTHESIS
@given(st.lists(st.sampled_from(_DIGEST_PIECES), max_size=12).map(b"".join)
       | st.binary(max_size=200))
def test_digest_spans_finds_every_hash_shaped_token(data: bytes) -> None:
    from leakmap.core.known import digest_spans

    found = sorted((end, digest, outer) for _start, end, digest, outer in digest_spans(data))
    assert found == _digest_tokens_by_regex(data)


@HYPOTHESIS
@given(st.lists(st.sampled_from([b"9812345678", b"98123 45678", b"(981) 234-5678", b"98.12.3",
                                 b"9988776655", b"-", b" ", b".", b"()", b'"', b"x", b"\xff"]),
                max_size=14).map(b"".join)
       | st.binary(max_size=120))
def test_phone_ends_are_where_the_national_digits_end_in_the_data(
        classifier: Classifier, data: bytes) -> None:
    """With the separators removed, the hits end where the data's digits end: mapped back
    to the data, each end is one past the last digit of a run of the national number."""
    import re

    ends = classifier.known.phone_ends(data)
    squeezed = data.translate(None, b" ()./-")
    nationals = ("9812345678", "9988776655", "9811122233", "9876500011")
    expected = sorted(m.start() + len(national) for national in nationals  # overlapping too
                      for m in re.finditer(f"(?={national})".encode(), squeezed))
    # the k-th kept byte of the squeezed data, back in the data
    kept = [at for at, byte in enumerate(data) if byte not in b" ()./-"]
    assert sorted(ends) == [kept[end - 1] + 1 for end in expected]


_JSON_PIECES = [b'{"a":', b'[', b']', b'{', b'}', b',', b'"x"', b'"\\ud800"', b'"\xc3\xa9"', b'\xc3',
                b'\xff', b'NaN', b'-0.5e3', b'1' * 25, b'true', b'null', b' ', b'\xef\xbb\xbf',
                b'"\x01"', b':', b'01']


@HYPOTHESIS
@given(st.lists(st.sampled_from(_JSON_PIECES), max_size=14).map(b"".join)
       | st.binary(max_size=60)
       | st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                      lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                      max_leaves=12).map(lambda doc: json.dumps(doc).encode()))
def test_a_body_reads_as_json_exactly_when_json_loads_reads_it(body: bytes) -> None:
    """simdjson answers first; what it refuses json.loads decides: never another answer."""
    from leakmap.core.decode import _reads_as_json

    try:
        json.loads(body)
        expected = True
    except (ValueError, RecursionError):
        expected = False
    assert _reads_as_json(body) is expected


def test_a_damaged_compressed_value_is_read_to_its_damage_and_counted(classifier) -> None:
    """gzip whose checksum is wrong (as a stream cut or flipped in transit is): what it
    inflated is read, and charged to the flow's decoded budget, so the next such value is
    inflated only to what is left of it, and the one after not at all."""
    values = []
    for filler in (b" ", b"\t", b"\n"):
        stream = bytearray(gzip.compress(json.dumps({"imei": IMEI}).encode() + filler * (
            24 << 20), 9))
        stream[-8] ^= 0xFF  # the CRC
        values.append(base64.b64encode(bytes(stream)).decode())
    body = json.dumps(dict(zip("abc", values, strict=True))).encode()
    analysis = classifier.classify(corpus.request("damaged", body, "application/json"))
    assert any(f.data_type == "imei" and f.encoding == "base64(gzip)" for f in analysis.findings)
    assert f"decompression limit hit: compressed values past the flow's {CAP} bytes not " \
        "inflated" in analysis.errors


def _multipart(content_type: str, body: bytes = b"hello") -> bytes:
    return (b"--XX\r\nContent-Disposition: form-data; name=\"f\"\r\nContent-Type: "
            + content_type.encode() + b"\r\n\r\n" + body + b"\r\n--XX--\r\n")


def _bad_crc(stream: bytes) -> bytes:
    damaged = bytearray(stream)
    damaged[-8] ^= 0xFF  # the CRC-32 in the trailer
    return bytes(damaged)


def _protobuf_string(text: str) -> bytes:
    return b"\x12" + bytes([len(text)]) + text.encode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


DOCUMENT = json.dumps({"imei": IMEI}).encode()
HIDDEN: dict[str, tuple[bytes, str, list[tuple[str, str]], str]] = {
    # name: (body, content type, headers, the field the IMEI is found at)
    "gzip in upper-case hex": (json.dumps({"d": gzip.compress(DOCUMENT).hex().upper()}).encode(),
                               "application/json", [], "request.body.json.d.json.imei"),
    "gzip in base64 of 76-character lines": (
        json.dumps({"d": base64.encodebytes(gzip.compress(DOCUMENT + b" " * 200)).decode()}
                   ).encode(), "application/json", [], "request.body.json.d.json.imei"),
    "a file name in a part's Content-Type": (
        _multipart(f'image/jpeg; name="IMG_{IMEI}.jpg"'), "multipart/form-data; boundary=XX",
        [], "request.body.multipart.f.headers.content-type"),
    "JSON Lines with a line of text": (  # a Sentry envelope's attachment
        b'{"event_id": "1"}\n{"type": "attachment"}\nsome text\n' + DOCUMENT + b"\n",
        "application/x-sentry-envelope", [], "request.body.jsonl[3].imei"),
    # brotli reads this one (its time field 1790000112) without an error, as an empty stream
    "gzip said to be br, read by brotli as nothing": (
        gzip.compress(DOCUMENT, mtime=1790000112), "application/json",
        [("content-encoding", "br")], "request.body.json.imei"),
    "gzip multipart said to be br": (
        gzip.compress(_multipart("application/json", DOCUMENT)),
        "multipart/form-data; boundary=XX", [("content-encoding", "br")],
        "request.body.multipart.f.json.imei"),
    "a bare value as a form body": (IMEI.encode(), "application/x-www-form-urlencoded", [],
                                    "request.body.text"),
    "JSON sent as a form": (DOCUMENT, "application/x-www-form-urlencoded", [],
                            "request.body.text.json.imei"),
    "a form's name": (f"a=1&{IMEI}=1".encode(), "application/x-www-form-urlencoded", [],
                      f"request.body.form.{IMEI}"),
    "a form piece with no value": (f"a=1&{IMEI}".encode(), "application/x-www-form-urlencoded",
                                   [], "request.body.form[1]"),
    "gzip whose CRC is wrong": (_bad_crc(gzip.compress(DOCUMENT)), "application/json",
                                [("content-encoding", "gzip")], "request.body.json.imei"),
    "gzip inside gzip, said once": (gzip.compress(gzip.compress(DOCUMENT)), "application/json",
                                    [("content-encoding", "gzip")], "request.body.json.imei"),
    "gzip said to be identity": (gzip.compress(DOCUMENT), "application/json",
                                 [("content-encoding", "identity")], "request.body.json.imei"),
    "zlib said nothing of": (zlib.compress(DOCUMENT), "application/json", [],
                             "request.body.json.imei"),
    "a gzip file in a multipart part": (
        _multipart("application/gzip", gzip.compress(DOCUMENT)),
        "multipart/form-data; boundary=XX", [], "request.body.multipart.f.json.imei"),
    "a header's name": (b"{}", "application/json", [(f"x-{IMEI}", "1")],
                        f"request.headers.x-{IMEI}"),
    "gzip of a protobuf in base64": (
        json.dumps({"d": base64.b64encode(gzip.compress(_protobuf_string(IMEI))).decode()}
                   ).encode(), "application/json", [], "request.body.json.d.protobuf.2"),
    # a second examiner (2026-12-04)
    "UTF-16 of odd length": (DOCUMENT.decode().encode("utf-16-le") + b"\n",
                             "application/json; charset=utf-16le", [], "request.body.json.imei"),
    "UTF-16 with a mark, of odd length": (DOCUMENT.decode().encode("utf-16") + b"\n",
                                          "application/json; charset=utf-16", [],
                                          "request.body.json.imei"),
    "a name repeated, the IMEI first": (
        b'{"imei":"%s","imei":"0"}' % IMEI.encode(), "application/json", [],
        "request.body.json.imei"),
    "a name repeated inside an object": (
        b'{"dev":{"imei":"%s","imei":null},"n":1}' % IMEI.encode(), "application/json", [],
        "request.body.json.dev.imei"),
    "Basic authorization": (b"{}", "application/json",
                            [("authorization", "Basic " + _b64(IMEI + ":secret"))],
                            "request.headers.authorization.base64"),
    "base64 behind a label in text": (("v1:" + _b64(f"imei={IMEI}&x=1")).encode(), "text/plain",
                                      [], "request.body.text.base64.form.imei"),
    "a data URL in a JSON string": (
        json.dumps({"d": "data:text/plain;base64," + _b64(f"imei={IMEI}"), "n": 1}).encode(),
        "application/json", [], "request.body.json.d.base64"),
    "a protobuf in base64 behind a label": (
        b"{}", "application/json",
        [("x-token", "Token " + base64.b64encode(_protobuf_string(IMEI) + b"\x18\x01").decode())],
        "request.headers.x-token.base64.protobuf.2"),
    "a multipart part that is multipart": (
        _multipart("multipart/mixed; boundary=YY", b"--YY\r\nContent-Type: application/json"
                   b"\r\n\r\n" + DOCUMENT + b"\r\n--YY--\r\n"),
        "multipart/form-data; boundary=XX", [], "request.body.multipart.f.multipart.0.json.imei"),
    "a multipart preamble": (b"imei=%s\r\n" % IMEI.encode() + _multipart("text/plain"),
                             "multipart/form-data; boundary=XX", [],
                             "request.body.multipart.preamble"),
    "a multipart epilogue": (_multipart("text/plain") + b"imei=" + IMEI.encode(),
                             "multipart/form-data; boundary=XX", [],
                             "request.body.multipart.epilogue"),
    "a protobuf in base64 in JSON": (
        json.dumps({"d": base64.b64encode(_protobuf_string(IMEI) + b"\x18\x01").decode(),
                    "n": 1}).encode(), "application/json", [], "request.body.json.d.protobuf.2"),
    "a protobuf in hex in a form": (
        b"a=1&d=" + (_protobuf_string(IMEI) + b"\x18\x01").hex().encode(),
        "application/x-www-form-urlencoded", [], "request.body.form.d.protobuf.2"),
    "encodings listed the wrong way round": (
        brotli.compress(gzip.compress(DOCUMENT)), "application/json",
        [("content-encoding", "br, gzip")], "request.body.json.imei"),
    "a struct in URL-safe base64 in JSON": (
        json.dumps({"d": base64.urlsafe_b64encode(b"\xfb\xff\x04\xd2" + IMEI.encode()
                                                  + b"\xfe\x00\x00\x63").decode()}).encode(),
        "application/json", [], "request.body.json.d.strings[0]"),
}


@pytest.mark.parametrize("name", HIDDEN)
def test_an_imei_where_an_adversarial_review_found_it_hidden(classifier, name: str) -> None:
    body, content_type, headers, field = HIDDEN[name]
    analysis = classifier.classify(corpus.request("hidden", body, content_type, headers))
    assert [f.field for f in analysis.findings if f.data_type == "imei"] == [field], (
        analysis.findings, analysis.errors)


@pytest.mark.parametrize("name", [name for name in HIDDEN if name.startswith((
    "UTF-16", "a name repeated", "Basic", "base64 behind", "a data URL", "a protobuf in",
    "a multipart", "a struct in"))])
def test_the_same_places_are_read_without_a_device_profile(name: str) -> None:
    """Without a device profile the IMEI is found by its pattern, at the same field."""
    body, content_type, headers, field = HIDDEN[name]
    bare = Classifier(load_policy(), load_device(None), NO_TIME_BUDGET)
    analysis = bare.classify(corpus.request("hidden", body, content_type, headers))
    assert [(f.field, f.match) for f in analysis.findings if f.data_type == "imei"] == [
        (field, "pattern")], (analysis.findings, analysis.errors)


def test_base64url_of_a_document_as_a_url_path_segment_is_read(classifier) -> None:
    segment = base64.urlsafe_b64encode(DOCUMENT).decode().rstrip("=")
    exchange = corpus.request("hidden", b"{}", "application/json",
                              url=f"https://{corpus.HOST}/t/{segment}/x", path=f"/t/{segment}/x")
    analysis = classifier.classify(exchange)
    assert [f.field for f in analysis.findings if f.data_type == "imei"] == [
        "request.path[1].json.imei"]


def test_a_repeated_name_is_noted() -> None:
    collector = Collector(NO_TIME_BUDGET)
    decode_payload(collector, "request.body", b'{"a": 1, "a": 2}', "application/json")
    assert [leaf.value for leaf in collector.leaves] == ["1", "2"]
    assert "JSON object names a member twice: each of its values read" in collector.errors


def test_long_names_of_words_are_names_and_names_of_tokens_values() -> None:
    """A 30-letter snake_case name stays a name (one more leaf per event would spend the
    leaf budget on analytics batches); base64 of an IMEI as a name is read as a value."""
    encoded = base64.b64encode(IMEI.encode()).decode()  # 20 characters, digits among them
    collector = Collector()
    expand_text(collector, "x", json.dumps({"firebase_previous_screen_class": "Main",
                                            encoded: 1}))
    assert [(leaf.path, leaf.value) for leaf in collector.leaves] == [
        (f"x.json.{encoded}", encoded), (f"x.json.{encoded}", IMEI),
        ("x.json.firebase_previous_screen_class", "Main"), (f"x.json.{encoded}", "1")]


def test_a_body_of_countless_gzip_members_is_read_to_the_members_cap() -> None:
    """10,000 members are read (the IMEI in the last is found); past them the body counts
    as cut. Each member is fed from a view of the body, not a copy of the rest of it (a
    million empty members in 16 MiB had taken 8 minutes)."""
    from leakmap.core.decode import _MAX_MEMBERS

    empty = gzip.compress(b"")
    within = empty * (_MAX_MEMBERS - 1) + gzip.compress(IMEI.encode())
    out, cut = decompress(within, "gzip", CAP)
    assert out == IMEI.encode() and not cut
    out, cut = decompress(within + empty * 50_000 + gzip.compress(b"late"), "gzip", CAP)
    assert out == IMEI.encode() and cut


def test_a_long_url_is_cut_for_the_flow_and_not_kept_by_urlsplits_cache(classifier) -> None:
    from urllib.parse import urlsplit

    from leakmap.core.exchange import MAX_URL_CHARS, split_url
    from leakmap.core.pipeline import Pipeline

    url = f"https://h.example/?imei={IMEI}&pad=" + "p" * (3 * MAX_URL_CHARS)
    before = urlsplit.cache_info().currsize
    assert split_url(url).query.startswith("imei=")
    assert urlsplit.cache_info().currsize == before
    pipeline = Pipeline(classifier, None, b"key")  # type: ignore[arg-type]  # no locator: inspect
    record = pipeline.inspect(corpus.request("long-url", url=url, path=url[17:]))
    assert len(record.exchange.url) == MAX_URL_CHARS
    assert f"only the first {MAX_URL_CHARS} kept and scanned" in record.analysis_error
    assert any(f.data_type == "imei" for f in record.findings)


@pytest.mark.parametrize(("query", "field"), [
    (f"?{IMEI}", "request.query[0]"), (f"?a=1&{IMEI}=1", f"request.query.{IMEI}")])
def test_an_imei_as_a_query_name_or_piece_is_found(classifier, query: str, field: str) -> None:
    url = f"https://h.example/q{query}"
    analysis = classifier.classify(corpus.request("query", url=url, path=url[17:]))
    assert [f.field for f in analysis.findings if f.data_type == "imei"] == [field]


def test_a_known_value_in_the_last_of_countless_messages_is_found(classifier) -> None:
    """60,000 client messages fill the leaf budget before the last, which holds the IMEI:
    the matcher's pass over the unread rest reads the client's messages too."""
    messages = [Message(True, b"tick %d" % index, True) for index in range(60_000)]
    messages.append(Message(True, json.dumps({"imei": IMEI}).encode(), True))
    exchange = corpus.request("ws", kind="websocket", messages=messages)
    analysis = classifier.classify(exchange)
    assert any(f.data_type == "imei" and f.field == "request.unread" for f in analysis.findings)
    assert "known values searched in the unread rest of the request as it came" in analysis.errors


@pytest.mark.parametrize("where", ["header", "text body", "JSON string", "JWT in a JSON string"])
def test_base64_json_inside_longer_text_is_opened(classifier, where: str) -> None:
    """``Bearer <base64 of {"imei": ...}>``: base64 of a JSON object with no dots (not a
    JSON Web Token) inside longer text is decoded and walked; so is a JSON Web Token
    inside a JSON string (the walk had taken such a value as plain)."""
    blob = base64.b64encode(DOCUMENT).decode()
    token = "eyJhbGciOiJub25lIn0." + base64.urlsafe_b64encode(DOCUMENT).decode().rstrip("=") + "."
    if where == "header":
        exchange = corpus.request("b64", b"{}", "application/json",
                                  [("authorization", f"Bearer {blob}")])
        field = "request.headers.authorization.base64[0].json.imei"
    elif where == "text body":
        exchange = corpus.request("b64", f"payload follows: {blob}".encode(), "text/plain")
        field = "request.body.text.base64[0].json.imei"
    elif where == "JSON string":
        exchange = corpus.request("b64", json.dumps({"note": f"payload: {blob}", "n": 1}).encode(),
                                  "application/json")
        field = "request.body.json.note.base64[0].json.imei"
    else:
        exchange = corpus.request("b64", json.dumps({"auth": f"Bearer {token}", "n": 1}).encode(),
                                  "application/json")
        field = "request.body.json.auth.jwt[0].payload.json.imei"
    analysis = classifier.classify(exchange)
    assert [f.field for f in analysis.findings if f.data_type == "imei"] == [field]


@pytest.mark.parametrize("padding", ["numbers", "contacts"])
def test_past_the_leaf_budget_patterns_are_searched_without_a_device(padding: str) -> None:
    """Without a device profile, an IMEI after the leaf budget's values (a contacts upload
    of 30,000 entries) is found by its pattern in the unread rest, once."""
    limits = Limits(budget_ms=600_000, max_leaves=2_000)
    bare = Classifier(load_policy(), load_device(None), limits)
    filler: object = (list(range(3_000)) if padding == "numbers" else
                      [{"name": f"n{i}", "tel": f"+1555{i:07d}"} for i in range(2_000)])
    body = json.dumps({"c": filler, "imei": IMEI}).encode()
    analysis = bare.classify(corpus.request("flood", body, "application/json"))
    assert [(f.field, f.match) for f in analysis.findings if f.data_type == "imei"] == [
        ("request.unread", "pattern")], analysis.errors
    assert "policy patterns searched in the unread rest of the request as it came" in (
        analysis.errors)


def _long_token() -> str:
    payload = json.dumps({"claims": "x" * 1500, "imei": IMEI}).encode()
    return "eyJhbGciOiJub25lIn0." + base64.urlsafe_b64encode(payload).decode().rstrip("=") + ".s"


@pytest.mark.parametrize(("where", "field"), [
    ("a JSON Web Token in a header", "request.headers.authorization.jwt[0].payload.json.imei"),
    ("a JSON Web Token in a JSON string", "request.body.json.t.jwt[0].payload.json.imei"),
    ("Basic authorization", "request.headers.authorization.base64"),
    ("a data URL in a JSON string", "request.body.json.d.base64"),
])
def test_tokens_and_labelled_base64_longer_than_a_window_are_followed(classifier, where: str,
                                                                        field: str) -> None:
    """A JSON Web Token of more than 1,024 characters (many claims) had been kept as a long
    value in windows, never decoded; so had labelled base64 that long."""
    padded = base64.b64encode(b"u" * 1500 + f":{IMEI}".encode()).decode()
    body, headers = b"{}", []
    if where == "a JSON Web Token in a header":
        headers = [("authorization", f"Bearer {_long_token()}")]
    elif where == "a JSON Web Token in a JSON string":
        body = json.dumps({"t": _long_token()}).encode()
    elif where == "Basic authorization":
        headers = [("authorization", f"Basic {padded}")]
    else:
        body = json.dumps({"d": f"data:text/plain;base64,{padded}"}).encode()
    analysis = classifier.classify(corpus.request("long", body, "application/json", headers))
    assert [f.field for f in analysis.findings if f.data_type == "imei"] == [field]
