"""Hostile payloads, generated deterministically: what a phone (or an attacker) may send.

Each ``case_*`` function returns ``(name, exchange)``.  Nothing here allocates
what the decoder must not: the decompression bombs expand to 1 GiB but are
built from 1 MiB chunks of zeros and stay small; the 100 MB body is made by
repeating a short run of bytes.

The same cases can be written as a HAR file (:func:`write_har`) or a mitmproxy
flow file (:func:`write_flows`, which keeps ``Content-Encoding``; HAR bodies
are stored decoded, so a HAR reader may drop it) for ``leakmap analyze``;
``scripts/make_corpus.py`` does that from the command line.
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import json
import random
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import brotli
import zstandard

from leakmap.core.exchange import Exchange, Message

IMEI = "865312345678901"  # samples/redmi-1s.yaml: a value the classifier knows
HOST = "hostile.example"
SERVER_IP = "127.0.0.1"
TIMESTAMP = 1_400_000_000.0  # fixed, so every generation is identical

MiB = 1 << 20
BOMB_SIZE = 1 << 30  # what every decompression bomb expands to
BIG_BODY_SIZE = 100 * 1000 * 1000 + 1  # "100 MB+"

Case = tuple[str, Exchange]


def _flow_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"leakmap-hostile:{name}"))


def request(name: str, body: bytes = b"", content_type: str | None = None,
            headers: list[tuple[str, str]] | None = None, **fields: Any) -> Exchange:
    """A POST to ``https://hostile.example/<name>`` that got a 200."""
    all_headers = [("host", HOST), ("user-agent", "okhttp/3.12.0")]
    if content_type is not None:
        all_headers.append(("content-type", content_type))
    all_headers += headers or []
    values: dict[str, Any] = dict(
        flow_id=_flow_id(name), kind="http", timestamp=TIMESTAMP, client_ip="10.0.0.2",
        client_port=40000, server_ip=SERVER_IP, server_port=443, sni=HOST, host=HOST,
        scheme="https", method="POST", url=f"https://{HOST}/{name}", path=f"/{name}",
        http_version="HTTP/1.1", request_headers=all_headers, request_body=body,
        status_code=200, response_headers=[("content-length", "0")], response_size=0,
    )
    values.update(fields)
    return Exchange(**values)


# --------------------------------------------------------------------------
# Decompression bombs: 1 GiB of zeros, compressed one 1 MiB chunk at a time.

def _zeros(total: int = BOMB_SIZE) -> Iterator[bytes]:
    chunk = bytes(MiB)
    for _ in range(total // MiB):
        yield chunk


@functools.cache
def _raw_deflate_zeros() -> tuple[bytes, int, int]:
    """Raw deflate of BOMB_SIZE zeros, with its CRC-32 and Adler-32.

    After a full flush deflate starts again from an empty window, so every
    1 MiB chunk compresses to the same bytes: compress one, repeat it.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()  # an empty final block
    crc, adler = 0, 1
    for block in _zeros():
        crc, adler = zlib.crc32(block, crc), zlib.adler32(block, adler)
    return chunk * (BOMB_SIZE // MiB) + tail, crc, adler


def gzip_bomb() -> bytes:
    raw, crc, _ = _raw_deflate_zeros()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # no name, no mtime: deterministic
    return header + raw + struct.pack("<II", crc, BOMB_SIZE & 0xFFFFFFFF)


def zlib_bomb() -> bytes:
    raw, _, adler = _raw_deflate_zeros()
    return b"\x78\xda" + raw + struct.pack(">I", adler)


@functools.cache
def brotli_bomb() -> bytes:
    compressor = brotli.Compressor(quality=5)
    return b"".join(compressor.process(block) for block in _zeros()) + compressor.finish()


@functools.cache
def zstd_bomb() -> bytes:
    buffer = io.BytesIO()
    with zstandard.ZstdCompressor(level=19).stream_writer(buffer, closefd=False) as writer:
        for block in _zeros():
            writer.write(block)
    return buffer.getvalue()


def _bomb(name: str, body: bytes, encoding: str) -> Case:
    return name, request(name, body, "application/json", [("content-encoding", encoding)])


def case_gzip_bomb() -> Case:
    return _bomb("gzip-bomb", gzip_bomb(), "gzip")


def case_deflate_bomb() -> Case:
    return _bomb("deflate-bomb", zlib_bomb(), "deflate")


def case_br_bomb() -> Case:
    return _bomb("br-bomb", brotli_bomb(), "br")


def case_zstd_bomb() -> Case:
    return _bomb("zstd-bomb", zstd_bomb(), "zstd")


def case_gzip_gzip_bomb() -> Case:
    """gzip around the gzip bomb: a few kB that expand twice."""
    return _bomb("gzip-gzip-bomb", gzip.compress(gzip_bomb(), 9, mtime=0), "gzip, gzip")


def case_gzip_two_members() -> Case:
    """Two gzip members, the IMEI in the second: a reader that stops after one misses it."""
    body = (gzip.compress(b'{"first": "member", ', mtime=0)
            + gzip.compress(b'"imei": "' + IMEI.encode() + b'"}', mtime=0))
    return "gzip-two-members", request("gzip-two-members", body, "application/json",
                                       [("content-encoding", "gzip")])


def case_bad_gzip() -> Case:
    """Says gzip, is not: the body is still scanned as it came."""
    body = b"\x1f\x8b\x08\x00garbage imei=" + IMEI.encode() + b" and more garbage"
    return "bad-gzip", request("bad-gzip", body, "text/plain", [("content-encoding", "gzip")])


def case_unknown_encoding() -> Case:
    body = f"imei={IMEI}".encode()
    return "unknown-encoding", request("unknown-encoding", body, "text/plain",
                                       [("content-encoding", "compress")])


# --------------------------------------------------------------------------
# Size and depth.

def big_body(size: int = BIG_BODY_SIZE) -> bytes:
    """A JSON array of at least ``size`` bytes, by repeating one short item."""
    item = b'{"k":"value","tag":"lorem ipsum"},'
    count = (size - 2) // len(item) + 1
    return b"[" + item * count + b'{"end":true}]'


def case_big_body(size: int = BIG_BODY_SIZE) -> Case:
    return "big-body", request("big-body", big_body(size), "application/json")


def case_wide_json(count: int = 1_000_000) -> Case:
    """``count`` empty objects, gzipped: 3 MB of JSON in 3 kB.

    With ``count=10_000_000`` (30 MB, under the decompression cap) a parser
    would build 10 million dicts, about 1 GB.
    """
    body = b'[{"imei":"' + IMEI.encode() + b'"},' + b"{}," * count + b"{}]"
    return "wide-json", request("wide-json", gzip.compress(body, 9, mtime=0), "application/json",
                                [("content-encoding", "gzip")])


def case_wide_xml(count: int = 300_000) -> Case:
    """``count`` empty elements; ``count=4_000_000`` (16 MB) would be 1 GB of elements."""
    body = b"<r><imei>" + IMEI.encode() + b"</imei>" + b"<a/>" * count + b"</r>"
    return "wide-xml", request("wide-xml", body, "application/xml")


def case_wide_protobuf(count: int = 100_000) -> Case:
    """``count`` varint fields; ``count=8_000_000`` (16 MB) would be 1 GB of tuples."""
    body = b"\x0a" + bytes([len(IMEI)]) + IMEI.encode() + b"\x08\x00" * count
    return "wide-protobuf", request("wide-protobuf", body, "application/x-protobuf")


def case_deep_json() -> Case:
    depth = 100_000
    return "deep-json", request("deep-json", b"[" * depth + b"]" * depth, "application/json")


def case_deep_json_object() -> Case:
    """100,000 nested objects with an IMEI beside the outermost one."""
    depth = 100_000
    body = b'{"imei":"' + IMEI.encode() + b'","a":' + b'{"a":' * depth + b"1" + b"}" * (depth + 1)
    return "deep-json-object", request("deep-json-object", body, "application/json")


def case_deep_parsable_json() -> Case:
    """Nested deeper than the walker goes, shallow enough for the parser."""
    depth = 500
    body = b'{"a":' * depth + b'"' + IMEI.encode() + b'"' + b"}" * depth
    return "deep-parsable-json", request("deep-parsable-json", body, "application/json")


def case_json_in_json_strings() -> Case:
    """A JSON document in a JSON string in a JSON string... 20 times."""
    document: Any = {"imei": IMEI}
    for _ in range(20):
        document = {"wrapped": json.dumps(document)}
    body = json.dumps(document).encode()
    return "json-in-json-strings", request("json-in-json-strings", body, "application/json")


def case_json_in_json_deep() -> Case:
    """16 JSON documents, each 60 objects deep, each in a string of the one around it (8 MB).

    A walker that starts counting again in every string recurses about 1,000
    frames deep.
    """
    document: Any = {"imei": IMEI}
    for _ in range(16):
        for _ in range(60):
            document = {"a": document}
        document = json.dumps(document, separators=(",", ":"))
    return "json-in-json-deep", request("json-in-json-deep", document.encode(), "application/json")


def case_long_number() -> Case:
    body = b'{"n": ' + b"7" * 100_000 + b', "imei": "' + IMEI.encode() + b'"}'
    return "long-number", request("long-number", body, "application/json")


def case_long_token() -> Case:
    """A 512 kB run of hex digits: one leaf, no separators."""
    token = random.Random(7).randbytes(256 * 1024).hex()
    body = json.dumps({"blob": token, "imei": IMEI}).encode()
    return "long-token", request("long-token", body, "application/json")


def case_nested_base64() -> Case:
    """The IMEI base64-encoded 40 times (about 1.5 MB)."""
    value = IMEI.encode()
    for _ in range(40):
        value = base64.b64encode(value)
    return "nested-base64", request("nested-base64", value, "text/plain")


def case_shallow_base64() -> Case:
    """The IMEI base64-encoded 5 times: inside the decoder's depth, so found."""
    value = IMEI.encode()
    for _ in range(5):
        value = base64.b64encode(value)
    return "shallow-base64", request("shallow-base64", value, "text/plain")


# --------------------------------------------------------------------------
# Malformed bodies.

def case_invalid_utf8() -> Case:
    body = b'{"imei": "' + IMEI.encode() + b'", "name": "\xff\xfe\xc3\x28\xed\xa0\x80"}'
    return "invalid-utf8", request("invalid-utf8", body, "application/json; charset=utf-8")


def case_invalid_utf8_text() -> Case:
    body = b"\xc3\x28 imei " + IMEI.encode() + b" \xf0\x28\x8c\xbc \xed\xa0\x80" * 100
    return "invalid-utf8-text", request("invalid-utf8-text", body, "text/plain")


def case_truncated_json() -> Case:
    body = b'{"imei": "' + IMEI.encode() + b'", "list": [1, 2, {"x": "y"'
    return "truncated-json", request("truncated-json", body, "application/json")


def case_malformed_json() -> Case:
    body = b"{'imei': " + IMEI.encode() + b", trailing: ,,}"
    return "malformed-json", request("malformed-json", body, "application/json")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def case_protobuf_lying_lengths() -> Case:
    """A length field that claims far more than there is, and nested ones that lie too."""
    imei_field = b"\x0a" + _varint(len(IMEI)) + IMEI.encode()
    inner_liar = b"\x12" + _varint(200) + b"\x0a\x05short"
    body = imei_field + b"\x1a" + _varint(len(inner_liar)) + inner_liar
    body += b"\x22" + _varint(2**63) + b"runs off the end"
    body += b"\x28" + b"\xff" * 12  # a varint that never ends
    return "protobuf-lying-lengths", request("protobuf-lying-lengths", body,
                                             "application/x-protobuf")


def case_protobuf_deep() -> Case:
    """A message nested 10,000 times, every length true."""
    message = b"\x0a" + _varint(len(IMEI)) + IMEI.encode()
    for _ in range(10_000):
        message = b"\x0a" + _varint(len(message)) + message
    return "protobuf-deep", request("protobuf-deep", message, "application/x-protobuf")


def case_multipart_no_boundary() -> Case:
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"imei\"\r\n\r\n" + IMEI.encode()
            + b"\r\n--xyz--\r\n")
    return "multipart-no-boundary", request("multipart-no-boundary", body, "multipart/form-data")


def case_multipart_broken() -> Case:
    """A boundary the body never uses, headers that do not parse, RFC 2231 junk."""
    body = (b"--other\r\nContent-Disposition: form-data; name*=bogus''%ff%fe; name=\r\n"
            b"Content-Type: ;;;\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64"
            b"\r\n--other--\r\n" + IMEI.encode())
    return "multipart-broken", request("multipart-broken", body,
                                       'multipart/form-data; boundary="b"; boundary=c')


def case_multipart_bad_charset() -> Case:
    """An RFC 2231 charset with a NUL in it: the email package raises ValueError on it."""
    body = (b"--b\r\nContent-Disposition: form-data; name*=us-asc\x00ii''x\r\n\r\nfirst\r\n"
            b"--b\r\nContent-Disposition: form-data; name=\"imei\"\r\n\r\n" + IMEI.encode()
            + b"\r\n--b--\r\n")
    return "multipart-bad-charset", request("multipart-bad-charset", body,
                                            "multipart/form-data; boundary=b")


def _many_parts(count: int) -> bytes:
    part = b"--b\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nvalue\r\n"
    body = part * count + b"--b\r\nContent-Disposition: form-data; name=\"imei\"\r\n\r\n"
    return body + IMEI.encode() + b"\r\n--b--\r\n"


def case_multipart_many_parts() -> Case:
    """2,000 parts: parsed."""
    return "multipart-many-parts", request("multipart-many-parts", _many_parts(2_000),
                                           "multipart/form-data; boundary=b")


def case_multipart_too_many_parts() -> Case:
    """20,000 parts (1 MB): more than the parser is given."""
    return "multipart-too-many-parts", request("multipart-too-many-parts", _many_parts(20_000),
                                               "multipart/form-data; boundary=b")


def case_multipart_huge_header() -> Case:
    """A Content-Disposition with 100,000 parameters: the email package needs 500 MB for it."""
    body = (b"--b\r\nContent-Disposition: form-data" + b"; a=b" * 100_000 + b"; name=imei\r\n\r\n"
            + IMEI.encode() + b"\r\n--b--\r\n")
    return "multipart-huge-header", request("multipart-huge-header", body,
                                            "multipart/form-data; boundary=b")


def case_billion_laughs() -> Case:
    lines = ['<?xml version="1.0"?>', "<!DOCTYPE lolz [", '<!ENTITY lol "lol">']
    for level in range(1, 10):
        previous = "lol" if level == 1 else f"lol{level - 1}"
        lines.append(f'<!ENTITY lol{level} "{f"&{previous};" * 10}">')
    lines += ["]>", "<lolz>&lol9;</lolz>"]
    return "billion-laughs", request("billion-laughs", "\n".join(lines).encode(),
                                     "application/xml")


def case_xml_external_entity() -> Case:
    body = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<r>&x;</r>")
    return "xml-external-entity", request("xml-external-entity", body, "text/xml")


def case_deep_xml() -> Case:
    depth = 100_000
    body = b"<a>" * depth + IMEI.encode() + b"</a>" * depth
    return "deep-xml", request("deep-xml", body, "application/xml")


def case_binary_junk() -> Case:
    body = random.Random(1).randbytes(256 * 1024)
    return "binary-junk", request("binary-junk", body, "application/octet-stream")


def case_binary_junk_grpc() -> Case:
    body = random.Random(2).randbytes(4096)
    return "binary-junk-grpc", request("binary-junk-grpc", body, "application/grpc")


def case_form_bomb() -> Case:
    """A form body of 200,000 fields: more values than the leaf budget."""
    body = b"&".join(b"f%d=v" % i for i in range(200_000))
    return "form-bomb", request("form-bomb", body, "application/x-www-form-urlencoded")


# --------------------------------------------------------------------------
# Headers, messages, flows without a response.

def case_many_headers() -> Case:
    headers = [(f"x-h{i}", f"value-{i}") for i in range(10_000)]
    headers.append(("x-imei", IMEI))
    return "many-headers", request("many-headers", b"", headers=headers)


def case_script_header() -> Case:
    headers = [("x-note", "<script>alert(1)</script>"),
               ("cookie", "a=<script>alert(1)</script>; imei=" + IMEI),
               ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>")]
    url = f"https://{HOST}/script-header?q=%3Cscript%3Ealert(1)%3C/script%3E"
    return "script-header", request("script-header", b"", headers=headers, url=url)


def case_websocket_many_messages() -> Case:
    messages = [Message(index % 2 == 0, f'{{"seq": {index}, "ping": "pong"}}'.encode(), True)
                for index in range(20_000)]
    messages.append(Message(True, json.dumps({"imei": IMEI}).encode(), True))
    messages.append(Message(True, random.Random(3).randbytes(2048), False))
    return "websocket-many-messages", request(
        "websocket-many-messages", b"", headers=[("upgrade", "websocket")], kind="websocket",
        method="GET", url=f"wss://{HOST}/websocket-many-messages", messages=messages,
    )


def case_websocket_huge_message() -> Case:
    """One 17 MB binary message: more than a body may be."""
    content = b"imei=" + IMEI.encode() + bytes(17_000_000)
    return "websocket-huge-message", request(
        "websocket-huge-message", b"", headers=[("upgrade", "websocket")], kind="websocket",
        method="GET", url=f"wss://{HOST}/websocket-huge-message",
        messages=[Message(True, content, False), Message(True, b'{"after": "cap"}', True)],
    )


def case_no_response() -> Case:
    body = json.dumps({"imei": IMEI}).encode()
    return "no-response", request("no-response", body, "application/json", status_code=None,
                                  response_headers=[], response_size=None,
                                  error="connection reset by peer")


CASES: tuple[Callable[[], Case], ...] = (
    # content encodings
    case_gzip_bomb, case_deflate_bomb, case_br_bomb, case_zstd_bomb, case_gzip_gzip_bomb,
    case_gzip_two_members, case_bad_gzip, case_unknown_encoding,
    # size, width and depth
    case_wide_json, case_wide_xml, case_wide_protobuf, case_form_bomb,
    case_deep_json, case_deep_json_object, case_deep_parsable_json,
    case_json_in_json_strings, case_json_in_json_deep, case_deep_xml, case_protobuf_deep,
    case_long_number, case_long_token, case_nested_base64, case_shallow_base64,
    # malformed
    case_invalid_utf8, case_invalid_utf8_text, case_truncated_json, case_malformed_json,
    case_protobuf_lying_lengths, case_binary_junk, case_binary_junk_grpc,
    case_multipart_no_boundary, case_multipart_broken, case_multipart_bad_charset,
    case_multipart_many_parts, case_multipart_too_many_parts, case_multipart_huge_header,
    case_billion_laughs, case_xml_external_entity,
    # headers, messages, flows without a response
    case_many_headers, case_script_header, case_websocket_many_messages,
    case_websocket_huge_message, case_no_response,
)


def case(name: str) -> Case:
    """The case called ``name`` (its function is ``case_`` + the name in snake case)."""
    make = globals().get("case_" + name.replace("-", "_"))
    if make is None:
        raise KeyError(name)
    result: Case = make()
    return result


def all_cases(big: bool = False) -> Iterator[Case]:
    """Every case; the 100 MB body only when ``big``."""
    for make in CASES:
        yield make()
    if big:
        yield case_big_body()


# --------------------------------------------------------------------------
# Writers.

def _har_body(body: bytes) -> dict[str, str]:
    try:
        return {"text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"text": base64.b64encode(body).decode("ascii"), "encoding": "base64"}


def har_entry(exchange: Exchange) -> dict[str, Any]:
    content_type = exchange.header("content-type") or ""
    request_part: dict[str, Any] = {
        "method": exchange.method or "GET",
        "url": exchange.url or "",
        "httpVersion": exchange.http_version or "HTTP/1.1",
        "headers": [{"name": k, "value": v} for k, v in exchange.request_headers],
        "queryString": [], "cookies": [], "headersSize": -1,
        "bodySize": len(exchange.request_body),
    }
    if exchange.request_body:
        request_part["postData"] = {"mimeType": content_type, **_har_body(exchange.request_body)}
    entry: dict[str, Any] = {
        "startedDateTime": datetime.fromtimestamp(exchange.timestamp, UTC).isoformat(),
        "time": 0,
        "request": request_part,
        "response": {
            "status": exchange.status_code or 0, "statusText": "",
            "httpVersion": exchange.http_version or "HTTP/1.1",
            "headers": [{"name": k, "value": v} for k, v in exchange.response_headers],
            "cookies": [], "content": {"size": exchange.response_size or 0, "mimeType": ""},
            "redirectURL": "", "headersSize": -1, "bodySize": exchange.response_size or 0,
        },
        "cache": {}, "timings": {"send": 0, "wait": 0, "receive": 0},
        "serverIPAddress": exchange.server_ip or "",
    }
    if exchange.error:
        entry["response"]["_error"] = exchange.error
    if exchange.messages:
        entry["_webSocketMessages"] = [
            {"type": "send" if m.from_client else "receive", "time": exchange.timestamp,
             "opcode": 1 if m.is_text else 2,
             "data": m.content.decode("utf-8", "replace") if m.is_text
             else base64.b64encode(m.content).decode("ascii")}
            for m in exchange.messages
        ]
    return entry


def write_har(cases: list[Case] | Iterator[Case], path: Path) -> list[str]:
    """Write ``cases`` as one HAR 1.2 file, entries in order; returns the case names."""
    names, entries = [], []
    for name, exchange in cases:
        names.append(name)
        entries.append(har_entry(exchange))
    document = {"log": {"version": "1.2", "creator": {"name": "leakmap-hostile", "version": "1"},
                        "entries": entries}}
    with path.open("w", encoding="utf-8") as handle:
        json.dump(document, handle)
    return names


def _mitm_headers(http: Any, pairs: list[tuple[str, str]]) -> Any:
    return http.Headers([(k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                         for k, v in pairs])


def write_flows(cases: list[Case] | Iterator[Case], path: Path) -> list[str]:
    """Write ``cases`` as a mitmproxy flow file; bodies keep their Content-Encoding."""
    from mitmproxy import http, websocket
    from mitmproxy import io as mitm_io
    from mitmproxy.connection import Client, Server
    from mitmproxy.flow import Error

    names = []
    with path.open("wb") as handle:
        writer = mitm_io.FlowWriter(handle)
        for name, exchange in cases:
            names.append(name)
            client = Client(peername=(exchange.client_ip or "10.0.0.2", exchange.client_port or 1),
                            sockname=("0.0.0.0", 8080), timestamp_start=exchange.timestamp)
            server = Server(address=(exchange.host or HOST, exchange.server_port or 443),
                            peername=(exchange.server_ip or SERVER_IP, exchange.server_port or 443),
                            sni=exchange.sni)
            flow = http.HTTPFlow(client, server)
            flow.id = exchange.flow_id
            flow.timestamp_created = exchange.timestamp
            flow.request = http.Request.make(exchange.method or "GET", exchange.url or "")
            # after make(): it would drop a Content-Encoding it cannot apply ("gzip, gzip")
            flow.request.headers = _mitm_headers(http, exchange.request_headers)
            flow.request.raw_content = exchange.request_body
            flow.request.timestamp_start = exchange.timestamp
            if exchange.status_code is not None:
                flow.response = http.Response.make(exchange.status_code)
                flow.response.headers = _mitm_headers(http, exchange.response_headers)
            if exchange.error:
                flow.error = Error(exchange.error)
            if exchange.kind == "websocket":
                flow.websocket = websocket.WebSocketData()
                for message in exchange.messages:
                    kind = websocket.Opcode.TEXT if message.is_text else websocket.Opcode.BINARY
                    flow.websocket.messages.append(websocket.WebSocketMessage(
                        kind, message.from_client, message.content, exchange.timestamp))
            writer.add(flow)
    return names
