"""Reading flow files: leakmap's fast path gives the exchange mitmproxy's own reader gives.

``exchange_from_record`` builds only the request of an HTTP flow through
mitmproxy and reads the rest of the stored state itself; here it must agree
with ``exchange_from_flow`` of the flow ``FlowReader`` builds, on flows that
vary every field the exchange is made from.
"""

from __future__ import annotations

import contextlib
import io as _io
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http, io
from mitmproxy.exceptions import FlowReadException
from mitmproxy.io import tnetstring
from mitmproxy.test import tflow

from leakmap.addons.flows import (
    exchange_from_flow,
    exchange_from_record,
    flow_records,
    tnetstring_dumps,
    tnetstring_loads,
)

HOSTS = ["api.account.xiaomi.com", "例え.jp", "10.0.0.7", "[2001:db8::1]", "", "bad host!"]
ADDRESSES = [None, ("123.125.114.144", 443), ("2001:db8::2", 8443), ("fe80::1%eth0", 80),
             ("not-an-ip", 1)]


def _header_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(st.sampled_from([b"api.account.xiaomi.com", b"x.cn:8443", b"[::1]:80", b"",
                                      b"\xff\xfe", "例え.jp".encode()]), st.binary(max_size=12))


@st.composite
def http_flows(draw: st.DrawFn) -> http.HTTPFlow:
    flow = tflow.tflow(resp=draw(st.booleans()), err=draw(st.booleans()))
    request = flow.request
    request.data.http_version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/3"]))
    request.data.method = draw(st.sampled_from([b"GET", b"POST", b"CONNECT", b"post", b"\xffX"]))
    request.data.scheme = draw(st.sampled_from([b"https", b"http", b"ftp"]))
    request.data.host = draw(st.sampled_from(HOSTS))
    request.data.port = draw(st.sampled_from([443, 80, 8080, 1]))
    request.data.authority = draw(st.sampled_from([b"", b"api.account.xiaomi.com:443", b"x.cn",
                                                   b"\xff", b"[::1]:8443"]))
    request.data.path = draw(st.sampled_from([b"/", b"/v2/stat?imei=1", b"*", b"/\xff\xfe", b""]))
    fields = draw(st.lists(st.tuples(st.sampled_from([b"Host", b"host", b"Content-Length",
                                                      b"X-\xff", b"Cookie"]), _header_bytes()),
                           max_size=4))
    request.headers = http.Headers(tuple(fields))
    request.raw_content = draw(st.sampled_from([None, b"", b'{"imei": "865312345678901"}']))
    request.timestamp_start = draw(st.sampled_from([0.0, 1407000000.5]))
    for conn in (flow.client_conn, flow.server_conn):
        # mitmproxy stores no client without an address
        conn.peername = draw(st.sampled_from(ADDRESSES[conn is flow.client_conn:]))
        conn.sni = draw(st.sampled_from([None, "api.account.xiaomi.com", ""]))
    flow.server_conn.address = draw(st.sampled_from(ADDRESSES))
    if flow.response is not None:
        flow.response.status_code = draw(st.sampled_from([200, 407, 502]))
        flow.response.headers = http.Headers(((b"Set-Cookie", b"\xffa=b"), (b"X", b"y")))
        flow.response.raw_content = draw(st.sampled_from([None, b"", b"ok"]))
    return flow


def _stored(flow: http.HTTPFlow) -> bytes:
    buffer = _io.BytesIO()
    io.FlowWriter(buffer).add(flow)
    return buffer.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(http_flows())
def test_the_fast_path_reads_what_mitmproxys_reader_reads(flow: http.HTTPFlow) -> None:
    """Where mitmproxy's reader refuses a state (a client without address), leakmap may
    read it anyway (hostile input is logged, not refused), but never fails otherwise."""
    record = _stored(flow)
    try:
        theirs = next(io.FlowReader(_io.BytesIO(record)).stream())
    except FlowReadException:
        with contextlib.suppress(ValueError):
            exchange_from_record(record, Path("x.flow"))
        return
    assert exchange_from_record(record, Path("x.flow")) == exchange_from_flow(theirs)


def test_other_flows_and_damaged_states_go_through_mitmproxys_reader(tmp_path: Path) -> None:
    """WebSocket, TCP and DNS flows, and an HTTP flow whose state the fast path cannot read
    (a response without status), still give what mitmproxy's reader gives, or its verdict:
    a record it refuses is logged as an unreadable flow, with that verdict as its error."""
    flows = [tflow.twebsocketflow(), tflow.ttcpflow(), tflow.tdnsflow(resp=True), tflow.tflow()]
    for flow in flows:
        record = _stored(flow)
        theirs = next(io.FlowReader(_io.BytesIO(record)).stream())
        assert exchange_from_record(record, tmp_path / "x.flow") == exchange_from_flow(theirs)
    original = tflow.tflow(resp=True)
    damaged = _stored(original).replace(b"11:status_code;3:200#", b"11:status_code;3:abc;")
    assert damaged != _stored(tflow.tflow(resp=True))
    path = tmp_path / "damaged.flow"
    path.write_bytes(damaged)
    try:
        next(io.FlowReader(_io.BytesIO(damaged)).stream())
        their_verdict = "read"
    except Exception:
        their_verdict = "refused"
    [ours] = [exchange_from_record(record, path) for record in flow_records(path)]
    assert their_verdict == "refused"
    assert ours is not None and ours.error is not None
    assert ours.error.startswith("unreadable flow record: not a readable mitmproxy flow file (")
    assert ours.flow_id == exchange_from_record(damaged, path).flow_id != original.id
    assert ours.request_body == damaged  # its own bytes, searched


# --------------------------------------------------------------------------
# tnetstrings

SCALARS = st.one_of(st.binary(max_size=20), st.text(max_size=20), st.integers(), st.booleans(),
                    st.none(), st.floats(allow_nan=False))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=8)), inner, max_size=5)),
    max_leaves=30)


@settings(max_examples=500, deadline=None)
@given(VALUES)
def test_tnetstrings_read_as_mitmproxy_reads_them(value: object) -> None:
    data = tnetstring.dumps(value)  # type: ignore[arg-type]
    assert tnetstring_loads(data) == tnetstring.loads(data) == value


@settings(max_examples=500, deadline=None)
@given(st.one_of(VALUES, st.tuples(SCALARS, SCALARS)))
def test_tnetstrings_written_as_mitmproxy_writes_them(value: object) -> None:
    assert tnetstring_dumps(value) == tnetstring.dumps(value)  # type: ignore[arg-type]


def test_flow_states_written_as_mitmproxy_writes_them() -> None:
    from mitmproxy.test import tflow

    made = [tflow.tflow(resp=True), tflow.tflow(err=True), tflow.twebsocketflow(), tflow.ttcpflow(),
            tflow.tudpflow(), tflow.tdnsflow(resp=True), tflow.tflow(resp=True, ws=True)]
    for flow in made:
        state = flow.get_state()
        assert tnetstring_dumps(state) == tnetstring.dumps(state), type(flow)


def _verdict(loads: object, data: bytes) -> object:
    try:
        return ("value", loads(data))  # type: ignore[operator]
    except (ValueError, TypeError, IndexError):
        return ("refused",)


@settings(max_examples=500, deadline=None)
@given(VALUES, st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=3))
def test_damaged_tnetstrings_are_refused_where_mitmproxy_refuses_them(
        value: object, at: int, junk: bytes) -> None:
    """Bytes replaced anywhere: where mitmproxy reads a value, so does leakmap (the same
    one), unless a length prefix stopped being plain digits, which leakmap refuses."""
    data = tnetstring.dumps(value)  # type: ignore[arg-type]
    at = at % len(data)
    damaged = data[:at] + junk + data[at + len(junk):]
    ours, theirs = _verdict(tnetstring_loads, damaged), _verdict(tnetstring.loads, damaged)
    assert ours == theirs or (ours == ("refused",) and not junk.isdigit())


def test_every_kind_of_stored_flow_reads_the_same_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "mix.flow"
    with path.open("wb") as handle:
        writer = io.FlowWriter(handle)
        for flow in (tflow.tflow(resp=True), tflow.twebsocketflow(), tflow.ttcpflow(),
                     tflow.tdnsflow(resp=True), tflow.tflow(err=True)):
            writer.add(flow)
    records = list(flow_records(path))
    assert len(records) == 5
    for record in records:
        assert tnetstring_loads(record) == tnetstring.loads(record)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(http_flows(), st.sampled_from([b"/", b"/other?x=1", b"*", b"", b"/\xff"]))
def test_the_remembered_host_and_url_are_mitmproxys(flow: http.HTTPFlow, other_path: bytes) -> None:
    """``exchange_from_flow`` remembers each authority's pretty host and URL prefix; it must
    give mitmproxy's ``pretty_host`` and ``pretty_url``, also for the next path on the same
    authority (a remembered entry)."""
    from leakmap.addons.flows import _host_and_url

    request = flow.request
    for path in (request.data.path, other_path, request.data.path):
        request.data.path = path
        try:
            theirs = (request.pretty_host, request.pretty_url)
        except ValueError:  # mitmproxy cannot say either: neither may leakmap pretend to
            continue
        assert _host_and_url(request, request.path) == theirs
