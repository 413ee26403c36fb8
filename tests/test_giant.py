"""Giant bodies: only the part the analysis scans is held, and the flow says how big it was.

A flow file's flow, a HAR string or a live request larger than the body cap is cut to
the cap where it is read, not after: memory follows the cap, not the capture (the 1 GiB
figure itself is measured by the benchmark, ``peak_rss_mb``).  Each cut is noted on the
flow with the size the value had, and the flow keeps its true request size.
"""

from __future__ import annotations

import base64
import io
import json
import ssl
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import io as mitm_io
from mitmproxy import tcp
from mitmproxy.test import tflow

from leakmap.addons.flows import exchange_from_record, flow_records
from leakmap.core import har
from leakmap.core.exchange import Exchange, Message, scanned_note

from conftest import leakmap_cli

IMEI = "865312345678901"  # samples/redmi-1s.yaml: a known value
KEEP = 1 << 20  # the body cap these tests give
BIG = 3 * KEEP + 12345  # more than the cap and its slack (addons/flows.py _CUT_SLACK)


def _body(size: int) -> bytes:
    head = json.dumps({"imei": IMEI, "pad": ""}).encode()[:-2]  # ... "pad": "
    return head + b"A" * (size - len(head) - 2) + b'"}'


def _write_flows(path: Path, body_size: int) -> None:
    """A POST of ``body_size`` bytes with a response as big and a long header, then a small
    POST, then a TCP flow whose client and server each sent one giant message."""
    with path.open("wb") as handle:
        writer = mitm_io.FlowWriter(handle)
        giant = tflow.tflow(resp=True)
        giant.request.headers["content-type"] = "application/json"
        giant.request.headers["x-long"] = "h" * BIG
        giant.request.content = _body(body_size)
        giant.response.content = b"r" * BIG
        writer.add(giant)
        small = tflow.tflow(resp=True)
        small.request.content = json.dumps({"imei": IMEI}).encode()
        writer.add(small)
        stream = tflow.ttcpflow()
        stream.messages = [tcp.TCPMessage(True, b"imei=" + IMEI.encode() + b"\0" * BIG),
                           tcp.TCPMessage(False, b"s" * BIG)]
        writer.add(stream)


def test_a_flow_over_the_cap_is_read_cut_and_says_what_it_was(tmp_path: Path) -> None:
    path = tmp_path / "giant.flow"
    _write_flows(path, BIG)
    whole = [exchange_from_record(record, path) for record in flow_records(path)]
    records = list(flow_records(path, KEEP))
    cut = [exchange_from_record(record, path) for record in records]
    assert len(cut) == len(whole) == 3
    assert len(records[0]) < 4 * KEEP  # body, header and response cut: 3 x 1 MB, not 12 MB
    body, stream = cut[0], cut[2]
    assert body is not None and stream is not None and whole[0] is not None
    assert body.request_body == whole[0].request_body[:KEEP]
    assert body.request_size == BIG  # the size it had, not what was kept
    assert body.response_size == BIG
    assert body.reader_notes == [  # in the order of the stored state; the header by its place
        scanned_note("body", BIG, KEEP),
        f"request.headers.3.1 of {BIG} bytes: only the first {KEEP} read from the capture",
    ]
    assert dict(body.request_headers)["x-long"] == "h" * KEEP
    # the server's message is not analysed: cut without a note; the client's is noted
    assert stream.reader_notes == [scanned_note("message 0", BIG + 20, KEEP)]
    assert stream.request_size == BIG + 20
    assert [(m.from_client, len(m.content)) for m in stream.messages] == [(True, KEEP), (False, 0)]
    assert cut[1] == whole[1]  # a flow under the cap is read as it always was
    for exchange, plain in zip(cut, whole, strict=True):
        assert exchange is not None and plain is not None
        assert (exchange.flow_id, exchange.url, exchange.host) == (plain.flow_id, plain.url,
                                                                   plain.host)


def test_a_flow_within_the_cap_and_its_slack_is_read_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "almost.flow"
    with path.open("wb") as handle:
        flow = tflow.tflow(resp=True)
        flow.request.content = _body(KEEP + 1000)  # the decoder cuts it, with its own note
        mitm_io.FlowWriter(handle).add(flow)
    assert list(flow_records(path, KEEP)) == list(flow_records(path)) == [path.read_bytes()]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_leakmap_analyze_finds_the_imei_in_a_giant_body(tmp_path: Path, device_file: Path,
                                                       workers: str) -> None:
    path = tmp_path / "giant.flow"
    _write_flows(path, BIG)
    db = f"sqlite:///{tmp_path / 'giant.db'}"
    leakmap_cli("analyze", str(path), "--device", str(device_file), "--db", db, "--run-name",
                "giant", "--max-body", str(KEEP), "--workers", workers)
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "giant", "--format",
                                    "json").stdout)
    flows = sorted(report["flows"], key=lambda row: -row["request_size"])
    assert [row["request_size"] for row in flows] == [BIG + 20, BIG, len(json.dumps(
        {"imei": IMEI}))]
    assert scanned_note("body", BIG, KEEP) in flows[1]["analysis_error"]
    assert flows[1]["response_size"] == BIG
    with_imei = {f["flow_id"] for f in report["findings"] if f["data_type"] == "imei"}
    assert with_imei == {row["flow_id"] for row in flows}


# -- HAR ---------------------------------------------------------------------

_TEXT = st.lists(st.sampled_from(["a", "é", "€", "😀", "\\", '"', "\n", "\x01", "xxxxx", "\ud800"]),
                max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(document=st.recursive(_TEXT, lambda inner: st.lists(inner, max_size=4)
                             | st.dictionaries(st.sampled_from(["k", "l", "m"]), inner, max_size=3),
                             max_leaves=12),
       keep=st.integers(8, 40), chunk=st.sampled_from([1, 3, 7, 64, 1 << 20]),
       ascii_only=st.booleans())
def test_json_pieces_keep_json_whole_and_cut_only_long_strings(
        document: object, keep: int, chunk: int, ascii_only: bool) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    pieces = list(har.json_pieces(io.BytesIO(text), keep, chunk))
    read = json.loads(b"".join(piece.text for piece in pieces))
    cuts = sum(piece.cut for piece in pieces)
    found = []

    def compare(original: object, got: object) -> None:
        if isinstance(original, dict):
            assert isinstance(got, dict) and got.keys() == original.keys()
            for key in original:
                compare(original[key], got[key])
        elif isinstance(original, list):
            assert isinstance(got, list) and len(got) == len(original)
            for a, b in zip(original, got, strict=True):
                compare(a, b)
        elif isinstance(got, str) and har.CUT_MARK in got:
            kept, _, length = got.rpartition(har.CUT_MARK)
            assert isinstance(original, str) and original.startswith(kept)
            size = len(original.encode("utf-8", "surrogatepass"))
            assert size > keep  # only a string that decodes to more than keep is cut
            # at least keep bytes are left, but where the cut meets the end of a chunk read
            # (a string may cross one whenever the text is longer than a chunk)
            assert len(kept.encode("utf-8", "surrogatepass")) >= keep - (
                6 if chunk < len(text) else 0)
            assert int(length) == len(json.dumps(original, ensure_ascii=ascii_only)
                                      .encode("utf-8", "surrogatepass")) - 2
            found.append(kept)
        else:
            assert got == original

    compare(document, read)
    assert cuts == len(found)


def _har(path: Path, texts: list[tuple[str, str | None]]) -> None:
    entries = [{"startedDateTime": "2014-08-04T09:15:05.000Z", "time": 1, "request": {
        "method": "POST", "url": "https://api.example.cn/up", "httpVersion": "HTTP/1.1",
        "headers": [], "queryString": [], "cookies": [], "headersSize": -1, "bodySize": -1,
        "postData": {"mimeType": "application/json", "text": text,
                     **({"encoding": encoding} if encoding else {})}},
        "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                     "headers": [], "cookies": [], "content": {"size": 0, "mimeType": "x/y"},
                     "redirectURL": "", "headersSize": -1, "bodySize": 0},
        "cache": {}, "timings": {"send": 0, "wait": 0, "receive": 0}} for text, encoding in texts]
    path.write_text(json.dumps({"log": {"version": "1.2", "creator": {"name": "t", "version": "1"},
                                        "entries": entries}}))


def test_a_large_har_is_read_with_its_giant_bodies_cut(tmp_path: Path, monkeypatch) -> None:
    body = _body(BIG)
    path = tmp_path / "giant.har"
    _har(path, [(body.decode(), None), (base64.b64encode(body).decode(), "base64"),
                (json.dumps({"imei": IMEI}), None)])
    whole = list(har.read_har(path, KEEP))  # a small file: read as it always was
    monkeypatch.setattr(har, "BIG_HAR", 0)
    cut = list(har.read_har(path, KEEP))
    assert [e.flow_id for e in cut] == [e.flow_id for e in whole]  # the file's digest, whole
    for exchange in cut[:2]:
        assert exchange.request_body == body[:KEEP]  # plain and base64 alike
        assert len(exchange.reader_notes) == 1
        assert exchange.reader_notes[0].startswith("body of about ")
        assert exchange.reader_notes[0].endswith(f"only the first {KEEP} scanned")
        assert exchange.request_size >= BIG
    assert cut[2] == whole[2]


_ENTRY = st.recursive(_TEXT | st.integers(0, 70).map("s".__mul__) | st.integers() | st.none(),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["log", "entries", "k", ":", "{"]),
                                        inner, max_size=3), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(entries=st.lists(_ENTRY, max_size=5), before=st.dictionaries(
           st.sampled_from(["version", "pages", "entriez"]), _ENTRY, max_size=2),
       chunk=st.sampled_from([1, 5, 64, 1 << 20]), spaced=st.booleans(),
       keep=st.sampled_from([8, 20, 1 << 20]))
def test_har_entries_are_the_entries_json_loads_finds(entries: list[object], before: dict,
                                                      chunk: int, spaced: bool, keep: int) -> None:
    """Entry by entry, the same values as json.loads of the whole file, whatever the entries
    hold (names like "log" and "entries" inside them, brackets in strings) and wherever the
    reads end; with long strings cut as json_pieces cuts them one by one."""
    document = {"log": {**before, "entries": entries, "after": [before]}, "x": before}
    text = json.dumps(document, indent=1 if spaced else None).encode("utf-8", "surrogatepass")
    read = [(json.loads(entry), cuts) for entry, cuts, _oversized in
            har.har_entries(io.BytesIO(text), keep=keep, chunk_size=chunk)]
    pieces = list(har.json_pieces(io.BytesIO(text), keep, chunk))
    whole = json.loads(b"".join(piece.text for piece in pieces))["log"]["entries"]
    assert [entry for entry, _cuts in read] == whole
    if keep > len(text):
        assert read == [(entry, 0) for entry in json.loads(text)["log"]["entries"]]
    assert sum(cuts for _entry, cuts in read) <= sum(piece.cut for piece in pieces)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="{}[],x", max_size=100))
def test_deepest_close_is_how_far_below_its_start_a_piece_goes(text: str) -> None:
    """What lets a piece of 36 million ``{}`` inside an entry be passed over in C."""
    depth = lowest = 0
    for sign in text:
        depth += (sign in "{[") - (sign in "}]")
        lowest = min(lowest, depth)
    assert har._deepest_close(text.encode()) == -lowest
    deep = text * 3 + "[" * 70 + text + "]" * 71  # past the rounds of pairs taken out
    depth = lowest = 0
    for sign in deep:
        depth += (sign in "{[") - (sign in "}]")
        lowest = min(lowest, depth)
    assert har._deepest_close(deep.encode()) == -lowest


@pytest.mark.parametrize("text, problem, before", [
    (b'{"log": {"entries": [{"a": 1}]]}', "an unmatched ']'", [{"a": 1}]),
    (b'{"log": {"entries": [{"a": 1}, {"b": [2}]}}', "ends inside a value", [{"a": 1}]),
    (b'{"log": {"entries": [{"a": 1}, {"b": "unterminated', "ends inside a value", [{"a": 1}]),
    (b'{"log": {"entries": [{"a": 1}, {"b": 2}', "ends inside a value", [{"a": 1}]),
    (b'{"log": {"pages": []}}', "no log.entries list", []),
    (b'[{"log": {"entries": [{"a": 1}]}}]', "no log.entries list", []),
])
def test_har_entries_keep_what_came_before_a_break(text: bytes, problem: str,
                                                   before: list[object]) -> None:
    """Brackets inside an entry are only counted ({"b": [2}]): the break shows at the end."""
    reader = har.har_entries(io.BytesIO(text), keep=100)
    read = []
    with pytest.raises(ValueError, match=problem):
        for entry, _cuts, _oversized in reader:
            read.append(json.loads(entry))
    assert read == before


def test_a_large_har_of_many_bodies_is_read_one_entry_at_a_time(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """60 bodies of 200 kB, each under the cap: memory follows one entry and a read, not
    the file (parsed whole, the file's 12 MB would be held twice over)."""
    import tracemalloc

    body = "x" * 200_000
    path = tmp_path / "many.har"
    _har(path, [(f"{body} {index} imei={IMEI}", None) for index in range(60)])
    whole = list(har.read_har(path, KEEP * 100))
    monkeypatch.setattr(har, "BIG_HAR", 0)
    monkeypatch.setattr(har, "_CHUNK", 1 << 16)  # reads of 8 MB would outweigh a 12 MB file
    tracemalloc.start()
    try:
        streamed = [(e.flow_id, len(e.request_body), e.reader_notes, e.error)
                    for e in har.read_har(path, KEEP * 100)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert streamed == [(e.flow_id, len(e.request_body), e.reader_notes, e.error) for e in whole]
    assert peak < path.stat().st_size / 4, peak


def _broken_har(path: Path, cut: bool) -> None:
    """Three entries and, second, one that is not JSON; ``cut``: the file ends
    inside the last entry."""
    _har(path, [(json.dumps({"imei": IMEI}), None)] * 3)
    text = path.read_text()
    first = text.index('{"startedDateTime"', 1)
    second = text.index('{"startedDateTime"', first + 1)
    broken = text[:second] + '{"startedDateTime": tru, "x": 1}, ' + text[second:]
    path.write_text(broken[: len(broken) - 20] if cut else broken)


@pytest.mark.parametrize("large", [True, False])
def test_a_har_with_a_broken_entry_and_a_cut_end(tmp_path: Path, monkeypatch,
                                                 large: bool) -> None:
    """An entry that is not JSON is a flow with a note; where the file breaks off, the
    entries before it are kept and the error says how many.  Large or not."""
    path = tmp_path / "broken.har"
    _broken_har(path, cut=True)
    if large:
        monkeypatch.setattr(har, "BIG_HAR", 0)
    read = []
    with pytest.raises(ValueError, match=r"after 3 entries \(the text ends inside a value\)"):
        read.extend(har.read_har(path, KEEP))
    assert [bool(e.error and "unreadable" in e.error) for e in read] == [False, True, False]
    assert read[0].request_body == read[2].request_body == json.dumps({"imei": IMEI}).encode()
    assert len({e.flow_id for e in read}) == 3


def test_leakmap_analyze_logs_every_entry_of_a_har_with_a_broken_one(tmp_path: Path) -> None:
    path = tmp_path / "broken.har"
    _broken_har(path, cut=False)
    db = f"sqlite:///{tmp_path / 'broken.db'}"
    leakmap_cli("analyze", str(path), "--db", db, "--run-name", "broken")
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "broken", "--format",
                                    "json").stdout)
    assert len(report["flows"]) == 4
    assert sum("entry 1 unreadable" in str(f["flow_error"]) for f in report["flows"]) == 1
    with_imei = {f["flow_id"] for f in report["findings"] if f["data_type"] == "imei"}
    assert len(with_imei) == 3


# -- live, and the hand-over ---------------------------------------------------

def test_within_cuts_the_body_and_the_client_messages_to_the_cap() -> None:
    exchange = Exchange(flow_id="f", kind="websocket", timestamp=0.0, request_body=b"b" * 30,
                        messages=[Message(False, b"s" * 30), Message(True, b"c" * 30),
                                  Message(True, b"short")])
    cut = exchange.within(10)
    assert cut.request_body == b"b" * 10
    assert [m.content for m in cut.messages] == [b"s" * 30, b"c" * 10, b"short"]
    assert cut.request_size == exchange.request_size == 65
    assert cut.reader_notes == [scanned_note("body", 30, 10), scanned_note("message 0", 30, 10)]
    assert exchange.within(30) is exchange


def test_a_giant_upload_through_the_proxy_is_logged_at_its_size(
        start_proxy, tls_server, tmp_path: Path, device_file: Path) -> None:
    db = f"sqlite:///{tmp_path / 'live.db'}"
    proxy = start_proxy("--device", str(device_file), "--db", db, "--run-name", "upload",
                        "--max-body", str(KEEP), "--workers", "1")
    context = ssl.create_default_context(cafile=str(proxy.ca))
    body = _body(BIG)
    with httpx.Client(proxy=proxy.url, verify=context, timeout=60) as client:
        answer = client.post(f"https://localhost:{tls_server.port}/up", content=body,
                             headers={"content-type": "application/json"})
        assert answer.status_code == 200
    assert proxy.stop() == 0, proxy.output
    assert tls_server.received[0][2] == body  # forwarded whole
    with (tmp_path / "captures" / "upload.flow").open("rb") as capture:  # and captured whole
        [flow] = mitm_io.FlowReader(capture).stream()
    assert flow.request.raw_content == body
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "upload", "--format",
                                    "json").stdout)
    [row] = report["flows"]
    assert row["request_size"] == BIG
    assert scanned_note("body", BIG, KEEP) in row["analysis_error"]
    assert [f["data_type"] for f in report["findings"]] == ["imei"]


@pytest.mark.parametrize("keep", [None, KEEP])
def test_a_length_that_lies_is_a_damaged_file_not_a_memory_error(tmp_path: Path,
                                                                 keep: int | None) -> None:
    path = tmp_path / "liar.flow"
    with path.open("wb") as handle:
        mitm_io.FlowWriter(handle).add(tflow.tflow(resp=True))
        handle.write(b"99999999999:{}}")  # 100 GB claimed, 3 bytes there
    records = flow_records(path, keep)
    assert exchange_from_record(next(records), path) is not None  # the flow before it counts
    with pytest.raises(ValueError, match="not a readable mitmproxy flow file"):
        next(records)


# -- the value-by-value reader, on arbitrary and damaged flows -------------------

_LEAF = st.one_of(st.binary(max_size=40), st.text(max_size=30), st.integers(), st.booleans(),
                  st.none(), st.floats(allow_nan=False, allow_infinity=False))
_VALUE = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=15)


def _cut_reference(value: object, keep: int) -> object:
    """``value`` with each bytes or str longer than ``keep`` bytes cut as the reader cuts it."""
    if isinstance(value, dict):  # a key as long is cut too (a later one of the same prefix wins)
        return {_cut_reference(key, keep): _cut_reference(item, keep)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_cut_reference(item, keep) for item in value]
    if isinstance(value, bytes) and len(value) > keep:
        return value[:keep]
    if isinstance(value, str) and len(value.encode()) > keep:
        return value.encode()[:keep].decode("utf8", "ignore")
    return value


@settings(max_examples=200, deadline=None)
@given(value=_VALUE, keep=st.integers(8, 30))  # "metadata" stays whole
def test_the_reader_cuts_exactly_the_long_values_of_any_flow(value: object, keep: int,
                                                            tmp_path_factory) -> None:
    from unittest import mock

    from leakmap.addons import flows

    state = {"metadata": {}, "value": value}
    path = tmp_path_factory.mktemp("cut") / "any.flow"
    path.write_bytes(flows.tnetstring_dumps(state))
    with mock.patch.object(flows, "_CUT_SLACK", 0):
        [record] = flows.flow_records(path, keep)
    read = flows.tnetstring_loads(record)
    assert isinstance(read, dict)
    cuts = read["metadata"].pop(flows.CUT_KEY, [])
    assert read == _cut_reference(state, keep)
    if len(path.read_bytes()) > keep:  # read value by value: each cut is listed once
        assert len(cuts) == len({where for where, _, _ in cuts})
        assert all(length > keep >= kept for _, length, kept in cuts)


@settings(max_examples=300, deadline=None)
@given(value=_VALUE, keep=st.integers(1, 30), flips=st.lists(
    st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=3)), min_size=1,
    max_size=4))
def test_the_reader_refuses_a_damaged_flow_with_one_error(value: object, keep: int,
                                                         flips: list[tuple[int, bytes]],
                                                         tmp_path_factory) -> None:
    from unittest import mock

    from leakmap.addons import flows

    data = bytearray(flows.tnetstring_dumps({"metadata": {}, "value": value}))
    for at, junk in flips:
        at %= len(data)
        data[at : at + len(junk)] = junk
    path = tmp_path_factory.mktemp("damaged") / "damaged.flow"
    path.write_bytes(bytes(data))
    with mock.patch.object(flows, "_CUT_SLACK", 0):
        try:
            for record in flows.flow_records(path, keep):
                flows.tnetstring_loads(record)
        except ValueError:
            pass  # damaged: said in one line, as for any damaged flow file
