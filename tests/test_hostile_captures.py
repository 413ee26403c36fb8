"""Captures whose own fields are hostile: every flow is still logged, and the IMEI found.

Cases from an adversarial review of ``leakmap analyze`` (2026-12-03) that had
lost a whole capture: a flow's time that no datetime can hold, a HAR entry
that ``json.loads`` refuses although the rest of the file is JSON, a HAR whose
``log`` names ``entries`` twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy import io as mitm_io
from mitmproxy.test import tflow

from conftest import leakmap_cli

IMEI = "865312345678901"  # samples/redmi-1s.yaml: a known value
NOTE = "is no time: stored as 1970-01-01"


def _report(db: str) -> dict:
    return json.loads(leakmap_cli("report", "--db", db, "--format", "json").stdout)


def _flows_with_imei(report: dict) -> set[str]:
    return {f["flow_id"] for f in report["findings"] if f["data_type"] == "imei"}


def _analyze(capture: Path, device: Path, tmp_path: Path) -> dict:
    db = f"sqlite:///{tmp_path / 'hostile.db'}"
    result = leakmap_cli("analyze", str(capture), "--device", str(device), "--db", db)
    assert "Traceback" not in result.stderr
    return _report(db)


@pytest.mark.parametrize("moment", [float("inf"), float("nan"), 1e20, -1e13])
def test_a_flow_at_no_possible_time_is_logged_and_so_are_the_others(
        tmp_path: Path, device_file: Path, moment: float) -> None:
    capture = tmp_path / "times.flow"
    with capture.open("wb") as handle:
        writer = mitm_io.FlowWriter(handle)
        for index in range(3):
            flow = tflow.tflow(resp=True)
            flow.request.content = json.dumps({"imei": IMEI}).encode()
            if index == 1:
                flow.request.timestamp_start = moment
            writer.add(flow)
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 3
    noted = [f for f in report["flows"] if NOTE in str(f["analysis_error"])]
    assert len(noted) == 1 and noted[0]["timestamp"].startswith("1970-01-01")
    assert len(_flows_with_imei(report)) == 3


def _entry(started: str = "2014-08-04T09:15:05.000Z", **extra: object) -> dict:
    return {"startedDateTime": started, "time": 1, "request": {
        "method": "POST", "url": "https://api.example.cn/up", "httpVersion": "HTTP/1.1",
        "headers": [], "queryString": [], "cookies": [], "headersSize": -1, "bodySize": -1,
        "postData": {"mimeType": "application/json", "text": json.dumps({"imei": IMEI})}},
        "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                     "headers": [], "cookies": [], "content": {"size": 0, "mimeType": "x/y"},
                     "redirectURL": "", "headersSize": -1, "bodySize": 0},
        "cache": {}, "timings": {"send": 0, "wait": 0, "receive": 0}, **extra}


def _har_text(entries: list[str]) -> str:
    return ('{"log": {"version": "1.2", "creator": {"name": "t", "version": "1"}, '
            f'"entries": [{", ".join(entries)}]}}}}')


# What json.loads refuses inside one entry of a file that is JSON all the same
REFUSED = {
    "nested": '"_extra": ' + "[" * 200_000 + '"imei ' + IMEI + '"' + "]" * 200_000,
    "long number": '"_extra": ' + "7" * 5_000,
}


@pytest.mark.parametrize("refused", sorted(REFUSED))
def test_a_har_entry_json_loads_refuses_is_searched_as_text(
        tmp_path: Path, device_file: Path, refused: str) -> None:
    plain = json.dumps(_entry())
    odd = plain[:-1] + ", " + REFUSED[refused] + "}"
    capture = tmp_path / "refused.har"
    capture.write_text(_har_text([plain, odd, plain]))
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 3
    unreadable = [f for f in report["flows"] if "entry 1 unreadable" in str(f["flow_error"])]
    assert len(unreadable) == 1
    assert "HAR entry 1 searched as text" in unreadable[0]["analysis_error"]
    assert len(_flows_with_imei(report)) == 3  # in the refused entry's own text too


def test_a_second_entries_list_does_not_hide_the_first(tmp_path: Path,
                                                       device_file: Path) -> None:
    """json.loads keeps the last of repeated names: an empty ``entries`` after the real one
    would leave nothing to log, and say nothing."""
    capture = tmp_path / "twice.har"
    entries = ", ".join(json.dumps(_entry()) for _ in range(3))
    capture.write_text('{"log": {"version": "1.2", "creator": {"name": "t", "version": "1"}, '
                       f'"entries": [{entries}], "entries": []}}}}')
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 3
    assert len(_flows_with_imei(report)) == 3


def test_a_har_time_before_the_year_one_in_utc_is_logged(tmp_path: Path,
                                                         device_file: Path) -> None:
    capture = tmp_path / "early.har"
    capture.write_text(_har_text([json.dumps(_entry()),
                                  json.dumps(_entry("0001-01-01T00:00:00+01:00")),
                                  json.dumps(_entry("9999-12-31T23:59:59-12:00"))]))
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 3
    assert sum(NOTE in str(f["analysis_error"]) for f in report["flows"]) == 2
    assert len(_flows_with_imei(report)) == 3


def test_the_host_of_a_request_without_a_host_header_and_the_userinfo_are_searched(
        tmp_path: Path, device_file: Path) -> None:
    """HTTP/2 names the host in ``:authority`` only; a URL may carry ``user:secret@``."""
    quiet = {"mimeType": "application/json", "text": "{}"}
    by_host, by_userinfo = _entry(), _entry()
    by_host["request"].update(url=f"https://{IMEI}.tracker.example/up", postData=quiet,
                              httpVersion="HTTP/2.0")
    by_userinfo["request"].update(url=f"https://id:{IMEI}@api.example.cn/up", postData=quiet)
    capture = tmp_path / "places.har"
    capture.write_text(_har_text([json.dumps(by_host), json.dumps(by_userinfo)]))
    report = _analyze(capture, device_file, tmp_path)
    fields = sorted(f["field"] for f in report["findings"] if f["data_type"] == "imei")
    assert fields == ["request.host", "request.userinfo"]


def _write(capture: Path, flows: list) -> Path:
    with capture.open("wb") as handle:
        writer = mitm_io.FlowWriter(handle)
        for flow in flows:
            writer.add(flow)
    return capture


def test_bodies_encoded_without_saying_so_are_read(tmp_path: Path, device_file: Path) -> None:
    """gzip with no Content-Encoding, UTF-16 with and without a byte-order mark, two
    Content-Encoding headers, a gzip'd binary WebSocket message."""
    import gzip
    import zlib

    from mitmproxy.websocket import WebSocketMessage
    from wsproto.frame_protocol import Opcode

    document = json.dumps({"imei": IMEI}).encode()
    bodies = {"gzip": (gzip.compress(document), []),
              "utf-16": (document.decode().encode("utf-16"), []),
              "utf-16-le": (document.decode().encode("utf-16-le"), []),
              "two headers": (gzip.compress(zlib.compress(document)),
                              [("content-encoding", "deflate"), ("content-encoding", "gzip")])}
    flows = []
    for path, (body, headers) in bodies.items():
        flow = tflow.tflow(resp=True)
        flow.request.path = "/" + path.replace(" ", "-")
        flow.request.headers.clear()
        for name, value in headers:
            flow.request.headers.add(name, value)
        flow.request.raw_content = body
        flows.append(flow)
    socket = tflow.twebsocketflow()
    socket.websocket.messages = [WebSocketMessage(Opcode.BINARY, True, gzip.compress(document))]
    flows.append(socket)
    report = _analyze(_write(tmp_path / "unsaid.flow", flows), device_file, tmp_path)
    assert len(report["flows"]) == 5
    found = {f["flow_id"] for f in report["findings"] if f["data_type"] == "imei"}
    assert {f["url"].rsplit("/", 1)[-1] for f in report["flows"] if f["flow_id"] in found} >= {
        "gzip", "utf-16", "utf-16-le", "two-headers"}
    assert len(found) == 5


def test_a_json_web_token_is_opened(tmp_path: Path, device_file: Path) -> None:
    """``Authorization: Bearer header.payload.signature``: base64url segments joined by dots,
    which no single base64 reading takes."""
    import base64

    def segment(document: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")

    token = ".".join([segment({"alg": "HS256", "typ": "JWT"}),
                      segment({"sub": "device", "imei": IMEI}), "c2lnbmF0dXJl"])
    flow = tflow.tflow(resp=True)
    flow.request.headers["authorization"] = f"Bearer {token}"
    report = _analyze(_write(tmp_path / "jwt.flow", [flow]), device_file, tmp_path)
    assert [(f["field"], f["encoding"]) for f in report["findings"]
            if f["data_type"] == "imei"] == [
        ("request.headers.authorization.jwt[0].payload.json.imei", "base64")]


def test_a_flow_of_countless_headers_keeps_the_first_and_says_so(tmp_path: Path,
                                                                device_file: Path) -> None:
    """Over the body cap, a flow is read value by value; a list of it (headers, WebSocket
    messages) keeps its first entries: three million one-byte headers were gigabytes."""
    from leakmap.addons.flows import _MAX_ITEMS

    flow = tflow.tflow(resp=True)
    flow.request.path = f"/up?imei={IMEI}"  # read before the headers, which spend the budget
    flow.request.headers.fields = tuple((b"x-some-header", b"v") for _ in range(_MAX_ITEMS + 5_000))
    capture = _write(tmp_path / "headers.flow", [flow])
    assert capture.stat().st_size > 200_000 + (1 << 20)  # over --max-body and its slack
    db = f"sqlite:///{tmp_path / 'headers.db'}"
    leakmap_cli("analyze", str(capture), "--device", str(device_file), "--db", db,
                "--max-body", "200000")
    report = _report(db)
    [stored] = report["flows"]
    assert "request.headers of " in stored["analysis_error"]
    assert "read from the capture" in stored["analysis_error"]
    assert [f["field"] for f in report["findings"] if f["data_type"] == "imei"] == [
        "request.query.imei"]


def test_a_flow_record_mitmproxy_refuses_does_not_hide_the_flows_after_it(
        tmp_path: Path, device_file: Path) -> None:
    """Framed as a flow, of a version no mitmproxy reads: logged with that error, its bytes
    searched, and the flows after it read (mitmproxy's own reader stops there)."""
    from mitmproxy.io import tnetstring

    flows = []
    for _ in range(3):
        flow = tflow.tflow(resp=True)
        flow.request.content = json.dumps({"imei": IMEI}).encode()
        flows.append(flow)
    capture = _write(tmp_path / "versions.flow", flows[:1])
    state = flows[1].get_state()
    state["version"] = 999
    with capture.open("ab") as handle:
        handle.write(tnetstring.dumps(state))
        mitm_io.FlowWriter(handle).add(flows[2])
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 3
    [refused] = [f for f in report["flows"] if "unreadable flow record" in str(f["flow_error"])]
    assert "version 999" in refused["flow_error"]
    assert len(_flows_with_imei(report)) == 3


def test_a_leak_behind_the_leaf_budget_is_still_found(tmp_path: Path, device_file: Path) -> None:
    """60,000 headers, or a body of 60,000 fields, spend the 50,000-value budget before the
    IMEI: the request as it came is searched once more for known values."""
    by_header = tflow.tflow(resp=True)
    by_header.request.headers.fields = (
        *((f"x-h{index}".encode(), f"v{index}".encode()) for index in range(60_000)),
        (b"x-dev", IMEI.encode()))
    by_body = tflow.tflow(resp=True)
    by_body.request.headers["content-type"] = "application/json"
    by_body.request.content = json.dumps(
        {**{f"k{index}": index for index in range(60_000)}, "imei": IMEI}).encode()
    report = _analyze(_write(tmp_path / "padded.flow", [by_header, by_body]), device_file,
                      tmp_path)
    assert len(report["flows"]) == 2
    assert all("leaf budget of 50000 values exhausted" in f["analysis_error"]
               for f in report["flows"])
    assert sorted((f["field"], f["encoding"]) for f in report["findings"]
                  if f["data_type"] == "imei") == [("request.unread", "plain")] * 2


def test_an_id_in_a_protobuf_fixed64_is_read_as_an_integer(tmp_path: Path,
                                                           device_file: Path) -> None:
    """Android's check-in sends its android_id as a fixed64 field; an IMEI fits in one. A
    fixed64 that reads as a plausible double (a coordinate) stays a double."""
    import struct

    body = (bytes([1 << 3 | 1]) + struct.pack("<Q", int(IMEI))  # field 1, fixed64
            + bytes([2 << 3 | 1]) + struct.pack("<d", 28.6139))  # field 2, a latitude
    flow = tflow.tflow(resp=True)
    flow.request.headers["content-type"] = "application/x-protobuf"
    flow.request.content = body
    report = _analyze(_write(tmp_path / "fixed64.flow", [flow]), device_file, tmp_path)
    assert [f["field"] for f in report["findings"] if f["data_type"] == "imei"] == [
        "request.body.protobuf.1"]


@pytest.mark.parametrize("make", [tflow.twebsocketflow, tflow.ttcpflow])
def test_a_flow_of_many_large_messages_keeps_what_the_analysis_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make) -> None:
    """Over the body cap, the client's messages are read up to the decoder's budget of
    decoded bytes and the server's not at all: 45 messages of 15 MB (each under the cap)
    were 1.6 GB of memory, all of it beyond what the analysis scans."""
    from mitmproxy import tcp, websocket
    from wsproto.frame_protocol import Opcode

    from leakmap.addons import flows as flow_files
    from leakmap.core.decode import Limits

    monkeypatch.setattr(Limits, "max_decoded_bytes", 500_000)
    flow = make()
    size = 150_000
    client = [(f"imei={IMEI};" if index == 0 else "").encode().ljust(size, b"x")
              for index in range(12)]
    stored = flow.websocket if make is tflow.twebsocketflow else flow
    stored.messages = []
    for index, content in enumerate(client):
        if make is tflow.twebsocketflow:
            stored.messages.append(websocket.WebSocketMessage(Opcode.TEXT, True, content))
            if index % 2:
                stored.messages.append(websocket.WebSocketMessage(Opcode.BINARY, False, b"s" * size))
        else:
            stored.messages.append(tcp.TCPMessage(True, content))
            if index % 2:
                stored.messages.append(tcp.TCPMessage(False, b"s" * size))
    capture = _write(tmp_path / "messages.flow", [flow])
    [record] = flow_files.flow_records(capture, keep=200_000)
    exchange = flow_files.exchange_from_record(record, capture)
    assert exchange is not None and exchange.error is None
    sent = [m.content for m in exchange.messages if m.from_client]
    assert [len(content) for content in sent] == [size] * 3 + [50_000] + [0] * 8
    assert sent[0] == client[0] and sent[3] == client[3][:50_000]
    assert all(m.content == b"" for m in exchange.messages if not m.from_client)
    assert exchange.request_size == size * 12  # as in the capture
    assert exchange.reader_notes == [
        "message 3 of 150000 bytes: only the first 50000 scanned",
        "messages beyond 500000 bytes not scanned"]


def _websocket_entry(messages: list[str]) -> dict:
    entry = _entry()
    entry["request"]["url"] = "wss://api.example.cn/socket"
    entry["_webSocketMessages"] = [{"type": "send", "time": 1.0, "opcode": 1, "data": data}
                                   for data in messages]
    return entry


def test_a_har_entry_of_many_large_messages_is_read_within_its_bounds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read entry by entry, each string is cut to the cap; an entry is bounded too: once its
    text is full (the cap and ENTRY_SLACK), each string after is cut short. 45 messages of
    15 MB each were 2.2 GB of memory."""
    from leakmap.core import har

    monkeypatch.setattr(har, "BIG_HAR", 0)
    monkeypatch.setattr(har, "ENTRY_SLACK", 100_000)
    size = 60_000
    messages = [(f"imei={IMEI};" if index == 0 else "").ljust(size, "x") for index in range(30)]
    capture = tmp_path / "messages.har"
    capture.write_text(_har_text([json.dumps(_websocket_entry(messages)), json.dumps(_entry())]))
    keep = 30_000  # the body cap: strings of more than 40,004 characters are cut
    socket, after = har.read_har(capture, keep)
    assert socket.error is None and socket.host == "api.example.cn"
    assert messages[0].startswith(socket.messages[0].content.decode())
    kept = [len(m.content) for m in socket.messages]
    assert len(kept) == 30 and kept[0] >= keep * 4 // 3  # the first cut to the cap
    assert sum(kept) <= keep * 4 // 3 + 4 + 100_000 + 30 * 264  # within the entry's room
    assert all(256 <= size <= 264 for size in kept[5:])  # the last ones cut short
    assert len(socket.reader_notes) == 21
    assert socket.reader_notes[-1] == "10 more strings of the entry cut"
    assert after.error is None and after.request_body == _entry()["request"]["postData"][
        "text"].encode()


@pytest.mark.parametrize("big", [False, True])
def test_a_har_entry_of_countless_objects_is_searched_as_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big: bool) -> None:
    """An entry of more objects and arrays than MAX_CONTAINERS is not parsed (36 million
    ``{}`` were 2.8 GB of objects), but logged and its first bytes searched as text; a file
    under BIG_HAR with that many brackets is read entry by entry, not parsed at once."""
    from leakmap.core import har

    monkeypatch.setattr(har, "MAX_CONTAINERS", 1_000)
    if big:
        monkeypatch.setattr(har, "BIG_HAR", 0)
    plain = json.dumps(_entry())
    crowded = plain[:-1] + ', "_extra": [' + ", ".join(["{}"] * 5_000) + "]}"
    capture = tmp_path / "crowded.har"
    capture.write_text(_har_text([plain, crowded, plain]))
    first, odd, last = har.read_har(capture, 1 << 20)
    assert first.error is None and last.error is None and first.request_body == last.request_body
    most = (1 << 20) * 4 // 3 + 4 + 2 * har.ENTRY_SLACK  # the cap of a string, and the slack
    assert odd.error == (f"HAR entry 1 unreadable: over {most} bytes, 1000 objects and arrays"
                         f" or {har.MAX_STRINGS} strings once its long strings are cut")
    assert IMEI in odd.request_body.decode() and odd.reader_notes == ["HAR entry 1 searched as text"]


@pytest.mark.parametrize("keep", [1_000, 10_000_000])
def test_a_flow_of_countless_lists_keeps_the_first_and_its_own_parts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: int) -> None:
    """Lists of lists (in its metadata) read whole were 6 GB for a 60 MB flow: a flow over
    the cap, or crowded within it, keeps its first values and still its own parts
    (addresses, headers), and says what was cut. Its metadata has a budget of its own: first
    in the record, it cannot spend the request's."""
    from leakmap.addons import flows as flow_files

    monkeypatch.setattr(flow_files, "_MAX_ENTRIES", 5_000)
    monkeypatch.setattr(flow_files, "_GRACE", 5_000)
    monkeypatch.setattr(flow_files, "_CUT_SLACK", 1_000)
    flow = tflow.tflow(resp=True)
    flow.request.content = json.dumps({"imei": IMEI}).encode()
    flow.request.headers["x-pad"] = "x" * 300  # a list of headers over 256 bytes
    state = flow.get_state()
    metadata = {"x": [[[] for _ in range(200)] for _ in range(100)]}  # 20,100 lists
    state.pop("metadata")
    # written last first, as mitmproxy writes a dict: the metadata comes first in the file
    record = flow_files.tnetstring_dumps({**state, "metadata": metadata})
    assert record.index(b"metadata") < record.index(b"x-pad")
    capture = tmp_path / "lists.flow"
    capture.write_bytes(record)
    [kept] = flow_files.flow_records(capture, keep)
    exchange = flow_files.exchange_from_record(kept, capture)
    assert exchange is not None and exchange.error is None
    assert exchange.request_body == flow.request.content
    assert exchange.server_ip == flow.server_conn.peername[0]
    assert exchange.request_headers == list(flow.request.headers.items(multi=True))
    assert any(note.startswith("metadata.x of ") for note in exchange.reader_notes)
    assert len(kept) < 40_000  # what was kept of it: 5,000 values, not 20,100 lists


@pytest.mark.parametrize("from_client", [1, "yes"])
def test_a_message_from_the_client_by_any_true_value_is_the_clients(
        tmp_path: Path, device_file: Path, from_client: object) -> None:
    """mitmproxy reads a stored ``from_client`` by its truth: so does leakmap, in a flow
    within the cap and in one read value by value (a server message of a million ':'), and
    a flow that breaks a reader is still logged, the flows after it too."""
    from mitmproxy.io import tnetstring

    records = []
    for crowded in (False, True):
        state = tflow.ttcpflow().get_state()
        state["messages"] = [[from_client, json.dumps({"imei": IMEI}).encode(), 946681204.0]]
        if crowded:
            state["messages"].append([False, b":" * 1_100_000, 946681205.0])
        records.append(tnetstring.dumps(state))
    plain = tflow.tflow(resp=True)
    plain.request.content = json.dumps({"imei": IMEI}).encode()
    capture = tmp_path / "truthy.flow"
    capture.write_bytes(b"".join(records) + tnetstring.dumps(plain.get_state()))
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 3
    assert len(_flows_with_imei(report)) == 3


def test_har_values_where_exporters_put_them_against_the_format_are_searched(
        tmp_path: Path, device_file: Path) -> None:
    """A query only in ``queryString``, a cookie only in ``cookies``, a ``text`` that is a
    JSON object or a number, headers as an object, a WebSocket message's data as an
    object: each holds the IMEI, and each is found."""
    quiet = {"mimeType": "application/json", "text": "{}"}
    by_query, by_cookie, by_object, by_number, by_headers, by_message = (
        _entry() for _ in range(6))
    by_query["request"].update(postData=quiet, queryString=[{"name": "d", "value": IMEI}])
    by_cookie["request"].update(postData=quiet, cookies=[{"name": "d", "value": IMEI}])
    by_object["request"]["postData"]["text"] = {"imei": IMEI}
    by_number["request"]["postData"].update(text=int(IMEI), mimeType="text/plain")
    by_headers["request"].update(postData=quiet, headers={"x-device": IMEI})
    by_message["request"].update(postData=quiet, url="wss://api.example.cn/socket")
    by_message["_webSocketMessages"] = [{"type": "send", "opcode": 1, "data": {"imei": IMEI}}]
    entries = [by_query, by_cookie, by_object, by_number, by_headers, by_message]
    capture = tmp_path / "odd.har"
    capture.write_text(_har_text([json.dumps(entry) for entry in entries]))
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 6
    assert sorted(f["field"] for f in report["findings"] if f["data_type"] == "imei") == sorted([
        "request.query.d", "request.cookies.d", "request.body.json.imei", "request.body.text",
        "request.headers.x-device", "websocket.messages[0].json.imei"])


def test_request_trailers_are_searched(tmp_path: Path, device_file: Path) -> None:
    """Header fields sent after the body (HTTP/2, chunked): read as the headers are."""
    from mitmproxy import http

    flow = tflow.tflow(resp=True)
    flow.request.content = b"{}"
    flow.request.trailers = http.Headers(x_device=IMEI)
    report = _analyze(_write(tmp_path / "trailers.flow", [flow]), device_file, tmp_path)
    assert [f["field"] for f in report["findings"] if f["data_type"] == "imei"] == [
        "request.trailers.x-device"]


def test_digits_of_other_scripts_are_read_as_digits(tmp_path: Path, device_file: Path) -> None:
    """An IMEI in full-width or Arabic-Indic digits, in a body, a header and a query
    (percent-encoded): each found, with a note."""
    wide = IMEI.translate({ord(d): chr(0xFF10 + int(d)) for d in "0123456789"})
    arabic = IMEI.translate({ord(d): chr(0x0660 + int(d)) for d in "0123456789"})
    by_body, by_header, by_query = (tflow.tflow(resp=True) for _ in range(3))
    by_body.request.headers["content-type"] = "application/json"
    by_body.request.content = json.dumps({"imei": wide}, ensure_ascii=False).encode()
    by_header.request.headers["x-device"] = arabic
    by_query.request.path = "/up?d=" + "".join(f"%{b:02X}" for b in wide.encode())
    report = _analyze(_write(tmp_path / "digits.flow", [by_body, by_header, by_query]),
                      device_file, tmp_path)
    assert sorted(f["field"] for f in report["findings"] if f["data_type"] == "imei") == [
        "request.body.json.imei", "request.headers.x-device", "request.query.d"]
    assert all("read as ASCII digits" in f["analysis_error"] for f in report["flows"])


def test_har_pairs_are_compared_as_pairs_and_cut_marks_cannot_be_forged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A queryString or cookie pair whose value is only a substring of the URL or Cookie
    header is still added; a string that ends like a cut one (the mark of an older version)
    is read as it is, beside a string that was cut."""
    from leakmap.core import har

    monkeypatch.setattr(har, "BIG_HAR", 0)
    entry = _entry()
    entry["request"]["url"] = f"https://api.example.cn/up?sid=1{IMEI}2"
    entry["request"]["queryString"] = [{"name": "imei", "value": IMEI}]
    entry["request"]["headers"] = [{"name": "Cookie", "value": f"sid=1{IMEI}2"},
                                   {"name": "X-Mark", "value": IMEI + "\x00leakmap-cut:99"}]
    entry["request"]["cookies"] = [{"name": "imei", "value": IMEI}]
    entry["request"]["postData"]["text"] = "x" * 2_000  # cut: the entry has a real cut
    capture = tmp_path / "pairs.har"
    capture.write_text(_har_text([json.dumps(entry)]))
    [exchange] = har.read_har(capture, 1_000)
    assert exchange.url.endswith(f"?sid=1{IMEI}2&imei={IMEI}")
    assert ("Cookie", f"imei={IMEI}") in exchange.request_headers
    assert ("X-Mark", IMEI + "\x00leakmap-cut:99") in exchange.request_headers
    assert len(exchange.request_body) == 1_000


def test_a_string_of_escaped_backslashes_is_cut_by_its_length_written() -> None:
    """``\\\\u`` (an escaped backslash, then u) counted as less than nothing: such a string
    was never cut, 500 MB of it held twice over."""
    import io

    from leakmap.core import har

    text = b'["' + b"\\\\u" * 10_000 + b'"]'
    pieces = list(har.json_pieces(io.BytesIO(text), 8, chunk_size=64))
    [string] = [piece for piece in pieces if piece.string]
    assert string.cut and len(string.text) < 6 * 8 + 6 + 64 + 100


def test_an_entry_of_countless_strings_is_searched_at_both_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers written as one object of countless pairs (2.4 million were 1 GB parsed): not
    parsed past MAX_STRINGS strings; its first and last bytes searched, the IMEI after the
    pairs too."""
    from leakmap.core import har

    monkeypatch.setattr(har, "MAX_STRINGS", 1_000)
    entry = _entry()
    entry["request"]["headers"] = {**{f"h{index}": "v" for index in range(5_000)},
                                   "x-device": IMEI}
    capture = tmp_path / "strings.har"
    capture.write_text(_har_text([json.dumps(entry), json.dumps(_entry())]))
    odd, plain = har.read_har(capture, 10_000)
    assert plain.error is None
    assert odd.error is not None and f"{har.MAX_STRINGS} strings" in odd.error
    assert len(odd.request_body) <= 10_000 and IMEI in odd.request_body.decode()


def test_the_servers_messages_do_not_crowd_out_the_clients(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the cap, the server's messages (never analysed) are kept up to a count, so that
    150,000 of them no longer pushed the client's message after them past the bounds."""
    from mitmproxy import websocket
    from wsproto.frame_protocol import Opcode

    from leakmap.addons import flows as flow_files

    monkeypatch.setattr(flow_files, "_SERVER_MESSAGES", 100)
    monkeypatch.setattr(flow_files, "_MAX_ITEMS", 1_000)
    monkeypatch.setattr(flow_files, "_CUT_SLACK", 1_000)
    flow = tflow.twebsocketflow()
    flow.websocket.messages = [websocket.WebSocketMessage(Opcode.TEXT, False, b"s")
                               for _ in range(2_500)]
    flow.websocket.messages.append(
        websocket.WebSocketMessage(Opcode.TEXT, True, json.dumps({"imei": IMEI}).encode()))
    capture = _write(tmp_path / "servers.flow", [flow])
    [record] = flow_files.flow_records(capture, keep=1_000)
    exchange = flow_files.exchange_from_record(record, capture)
    assert exchange is not None and exchange.error is None
    assert [m.from_client for m in exchange.messages] == [False] * 100 + [True]
    assert exchange.messages[-1].content == json.dumps({"imei": IMEI}).encode()
    assert "2400 of the server's 2500 messages not read (not analysed)" in exchange.reader_notes


def test_compressed_values_inside_base64_or_hex_are_inflated(tmp_path: Path,
                                                             device_file: Path) -> None:
    """Apps gzip what they send and base64 it into a field (``H4sI...``): gzip, zlib and zstd
    streams in base64, URL-safe base64 or hex, in a body, a header and a query."""
    import base64
    import gzip
    import zlib

    import zstandard

    document = json.dumps({"imei": IMEI}).encode()
    in_body, in_header, in_query, in_form = (tflow.tflow(resp=True) for _ in range(4))
    in_body.request.headers["content-type"] = "application/json"
    in_body.request.content = json.dumps(
        {"blob": base64.b64encode(gzip.compress(document)).decode()}).encode()
    in_header.request.headers["x-state"] = base64.urlsafe_b64encode(
        zlib.compress(document)).decode().rstrip("=")
    in_query.request.path = "/up?z=" + base64.b64encode(zstandard.compress(document)).decode(
        ).replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    in_form.request.headers["content-type"] = "application/x-www-form-urlencoded"
    in_form.request.content = b"a=1&packed=" + gzip.compress(document).hex().encode()
    report = _analyze(_write(tmp_path / "packed.flow", [in_body, in_header, in_query, in_form]),
                      device_file, tmp_path)
    found = sorted((f["field"], f["encoding"]) for f in report["findings"]
                   if f["data_type"] == "imei")
    assert found == [("request.body.form.packed.json.imei", "hex(gzip)"),
                     ("request.body.json.blob.json.imei", "base64(gzip)"),
                     ("request.headers.x-state.json.imei", "base64(deflate)"),
                     ("request.query.z.json.imei", "base64(zstd)")]


def test_compressed_values_share_the_flows_decoded_budget(tmp_path: Path,
                                                          device_file: Path) -> None:
    """Three base64'd gzip bombs of 64 MiB each in one body: the first is inflated to the
    flow's 32 MiB, the others not at all (said once), and the IMEI beside them is found."""
    import base64
    import gzip

    bombs = {name: base64.b64encode(gzip.compress(name.encode() * (64 << 20), 9)).decode()
             for name in "abc"}
    flow = tflow.tflow(resp=True)
    flow.request.headers["content-type"] = "application/json"
    flow.request.content = json.dumps({**bombs, "imei": IMEI}).encode()
    report = _analyze(_write(tmp_path / "bombs.flow", [flow]), device_file, tmp_path)
    [row] = report["flows"]
    assert "decompression limit hit: gzip value cut at 33554432 bytes" in row["analysis_error"]
    assert "compressed values past the flow's 33554432 bytes not inflated" in row["analysis_error"]
    assert _flows_with_imei(report) == {row["flow_id"]}


def test_encodings_are_undone_64_deep_and_said_so_past_that(tmp_path: Path,
                                                           device_file: Path) -> None:
    """A query value percent-encoded 60 times is read to its IMEI (as the known value, under
    every layer); 70 times, the note says where the decoder stopped."""
    from urllib.parse import quote

    def encoded(times: int) -> str:
        text = f"imei={IMEI}"
        for _ in range(times):
            text = quote(text, safe="")
        return text

    within, past = tflow.tflow(resp=True), tflow.tflow(resp=True)
    within.request.path = "/up?d=" + encoded(60)
    past.request.path = "/up?d=" + encoded(70)
    report = _analyze(_write(tmp_path / "layers.flow", [within, past]), device_file, tmp_path)
    [known] = [f for f in report["findings"] if f["flow_id"] == within.id
               and f["data_type"] == "imei" and f["match"] == "known"]
    assert known["encoding"] == "url*59"  # the query's own decoding is not a layer
    notes = {row["flow_id"]: row["analysis_error"] or "" for row in report["flows"]}
    assert "encodings nested deeper than 64 not undone" in notes[past.id]
    assert "encodings nested" not in notes[within.id]


@pytest.mark.parametrize("content_type, body", [
    ("application/json", '{"a":' * 300 + json.dumps({"imei": IMEI}) + "}" * 300),
    ("application/xml", "<a>" * 300 + f"<imei>{IMEI}</imei>" + "</a>" * 300),
    ("application/xml", f"<r><x>1</x>{IMEI}<y/></r>"),  # mixed content: the text after <x>
])
def test_values_deeper_than_the_walk_and_between_elements_are_read(
        tmp_path: Path, device_file: Path, content_type: str, body: str) -> None:
    flow = tflow.tflow(resp=True)
    flow.request.headers["content-type"] = content_type
    flow.request.content = body.encode()
    report = _analyze(_write(tmp_path / "deep.flow", [flow]), device_file, tmp_path)
    [field] = [f["field"] for f in report["findings"] if f["data_type"] == "imei"]
    [row] = report["flows"]
    if body.startswith("<r>"):
        assert field == "request.body.xml.r" and not row["analysis_error"]
    else:
        assert field.endswith(".…")
        assert "structure deeper than 64: the deeper values read under one path" in (
            row["analysis_error"])


def _flow_with(body: bytes, content_type: str, **headers: str):
    flow = tflow.tflow(resp=True)
    flow.request.headers["content-type"] = content_type
    for name, value in headers.items():
        flow.request.headers[name.replace("_", "-")] = value
    flow.request.content = None
    flow.request.raw_content = body
    return flow


def test_values_in_names_markup_part_headers_comments_and_lying_encodings_are_found(
        tmp_path: Path, device_file: Path) -> None:
    """Places an IMEI hides that a value-by-value walk passes over: an object keyed by it,
    character references, a part's file name, an XML comment, gzip that says it is br, and
    the second document of a JSON Lines body (read by its keys, not as text)."""
    import gzip

    references = "".join(f"&#{ord(digit)};" for digit in IMEI)
    multipart = (b'--XX\r\nContent-Disposition: form-data; name="log"; filename="dump-'
                 + IMEI.encode() + b'.txt"\r\n\r\nhello\r\n--XX--\r\n')
    flows = {
        "request.body.json.devices.865312345678901": _flow_with(
            json.dumps({"devices": {IMEI: {"seen": 1}}, "n": 2}).encode(), "application/json"),
        "request.body.text": _flow_with(f"<p>{references}</p>".encode(), "text/html"),
        "request.body.json.note": _flow_with(json.dumps({"note": references}).encode(),
                                             "application/json"),
        "request.body.multipart.log.headers.content-disposition": _flow_with(
            multipart, "multipart/form-data; boundary=XX"),
        "request.body.xml.comment": _flow_with(f"<a><!-- {IMEI} --><b>1</b></a>".encode(),
                                               "application/xml"),
        "request.body.json.imei": _flow_with(gzip.compress(json.dumps({"imei": IMEI}).encode()),
                                             "application/json", content_encoding="br"),
        "request.body.jsonl[1].imei": _flow_with(
            b'{"event": "start"}\n{"imei": "' + IMEI.encode() + b'"}\n', "application/x-ndjson"),
    }
    report = _analyze(_write(tmp_path / "places.flow", list(flows.values())), device_file,
                      tmp_path)
    found = {f["flow_id"]: (f["field"], f["encoding"]) for f in report["findings"]
             if f["data_type"] == "imei" and f["match"] == "known"}
    assert {flow.id: field for field, flow in flows.items()} == {
        flow_id: field for flow_id, (field, _encoding) in found.items()}
    assert found[flows["request.body.text"].id][1] == "html"
    errors = {row["flow_id"]: row["analysis_error"] for row in report["flows"]}
    assert "body said to be br starts as gzip: read as gzip" in errors[
        flows["request.body.json.imei"].id]


def test_names_that_may_be_values_are_read_by_the_plain_walk_too() -> None:
    """The classifier's gates usually pick what to walk; without them (a long document, a
    device with a location) the walk itself reads such names."""
    from leakmap.core.decode import Collector, walk_structure

    collector = Collector()
    walk_structure(collector, "body", {"a": {IMEI: 1, "me@example.com": 2, "plain": 3}})
    assert [(leaf.path, leaf.value) for leaf in collector.leaves] == [
        (f"body.a.{IMEI}", IMEI), ("body.a.me@example.com", "me@example.com"),
        (f"body.a.{IMEI}", "1"), ("body.a.me@example.com", "2"), ("body.a.plain", "3")]


@pytest.mark.parametrize("damage", ["junk between two flows", "a length that lies"])
def test_damage_inside_a_flow_file_does_not_hide_the_flows_after_it(
        tmp_path: Path, device_file: Path, damage: str) -> None:
    """Junk written where a flow should begin, or a flow whose length is wrong: its bytes are
    logged as an unreadable flow (and searched: the IMEI in them is found), and reading
    goes on at the next place a whole flow begins."""
    flows = [tflow.tflow(resp=True) for _ in range(3)]
    for index, flow in enumerate(flows):
        flow.request.path = f"/flow{index}?imei={IMEI}" if index else f"/flow{index}"
    records = []
    for flow in flows:
        single = _write(tmp_path / "one.flow", [flow])
        records.append(single.read_bytes())
    if damage == "junk between two flows":
        middle = records[1] + b"\x00junk 12:34:{}} imei " + IMEI.encode() + b" 99" + records[2]
        expected_flows = 4  # the three, and the junk
    else:
        length, _colon, rest = records[1].partition(b":")
        middle = str(int(length) + 7).encode() + b":" + rest + records[2]
        expected_flows = 3  # the first, the second's bytes (its IMEI found), the third
    capture = tmp_path / "damaged.flow"
    capture.write_bytes(records[0] + middle)
    db = f"sqlite:///{tmp_path / 'damaged.db'}"
    result = leakmap_cli("analyze", str(capture), "--device", str(device_file), "--db", db)
    assert "Traceback" not in result.stderr and "not a readable" not in result.stderr
    report = _report(db)
    assert len(report["flows"]) == expected_flows
    unreadable = [row for row in report["flows"]
                  if (row["flow_error"] or "").startswith("unreadable flow record")]
    assert len(unreadable) == 1
    assert unreadable[0]["flow_id"] in _flows_with_imei(report)
    assert flows[2].id in _flows_with_imei(report)


def test_flows_that_share_an_id_keep_the_first_ones_findings(tmp_path: Path,
                                                              device_file: Path) -> None:
    """The store keeps the last record of an id (a flow saved again when it ended is one
    flow); a crafted capture whose second flow takes the first's id must not hide the
    first one's leak: its findings come along, with a note."""
    first, second = tflow.tflow(resp=True), tflow.tflow(resp=True)
    first.request.path = f"/up?imei={IMEI}"
    second.id = first.id
    report = _analyze(_write(tmp_path / "twins.flow", [first, second]), device_file, tmp_path)
    [row] = report["flows"]
    assert row["url"].endswith(second.request.path)
    assert _flows_with_imei(report) == {first.id}
    assert "flow id came before in the run: stored as its last record, with 1 finding(s) " \
        "of the earlier one" in row["analysis_error"]


@pytest.mark.parametrize("lead", [b"\n" * 100, b"\xef\xbb\xbf" + b" " * 100])
def test_a_har_after_whitespace_is_read_as_har(tmp_path: Path, device_file: Path,
                                               lead: bytes) -> None:
    entry = {"startedDateTime": "2014-08-01T10:00:00Z",
             "request": {"method": "GET", "url": f"https://h.example/?imei={IMEI}"},
             "response": {"status": 200}}
    capture = tmp_path / "lead.har"
    capture.write_bytes(lead + json.dumps({"log": {"version": "1.2", "entries": [entry]}}).encode())
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 1 and _flows_with_imei(report)


def test_har_entries_of_the_wrong_type_and_upload_file_names_are_searched(
        tmp_path: Path, device_file: Path) -> None:
    """An entry that is a string, a request that is a list: logged with the problem and
    their text searched; a posted file's name (``params[].fileName``) read."""
    upload = {"startedDateTime": "2014-08-01T10:00:00Z",
              "request": {"method": "POST", "url": "https://h.example/up",
                          "postData": {"mimeType": "multipart/form-data", "params": [
                              {"name": "log", "fileName": f"dump-{IMEI}.txt", "value": "x"}]}},
              "response": {"status": 200}}
    listed = {"startedDateTime": "2014-08-01T10:00:00Z", "request": ["imei", IMEI],
              "response": {"status": 200}}
    capture = tmp_path / "types.har"
    capture.write_text(json.dumps({"log": {"version": "1.2", "entries": [
        f"imei={IMEI}", listed, upload]}}))
    report = _analyze(capture, device_file, tmp_path)
    assert len(report["flows"]) == 3
    assert len(_flows_with_imei(report)) == 3
