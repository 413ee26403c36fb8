"""mitmproxy flows to :class:`~leakmap.core.exchange.Exchange`, and flow files.

The only module that knows mitmproxy's flow classes.  Bodies are taken as
``raw_content`` (still content-encoded): the core decodes them with a
streaming decompressor and a cap, which mitmproxy's ``.content`` would not.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import mmap
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

from mitmproxy import connection, dns, http, tcp, tls, udp
from mitmproxy.flow import Flow
from mitmproxy.io import compat

from leakmap.core.decode import Limits
from leakmap.core.exchange import Exchange, Message, scanned_note


def _ip(address: tuple | None) -> str | None:
    return _canonical_ip(str(address[0])) if address else None


@functools.lru_cache(maxsize=4096)
def _canonical_ip(text: str) -> str | None:
    """``text`` as an IP address is written canonically (without an IPv6 zone), or None.
    Remembered: a phone talks to few addresses, and parsing one costs microseconds per flow."""
    try:
        return str(ipaddress.ip_address(text.split("%")[0]))
    except ValueError:
        return None


def _port(address: tuple | None) -> int | None:
    return int(address[1]) if address and len(address) > 1 else None


def _server(conn: connection.Server) -> tuple[str | None, int | None]:
    address = conn.peername or conn.address
    return _ip(address), _port(conn.peername or conn.address)


def _base(flow: Flow, kind: str) -> Exchange:
    server_ip, server_port = _server(flow.server_conn)
    client = flow.client_conn.peername
    return Exchange(
        flow_id=flow.id,
        kind=kind,
        timestamp=flow.timestamp_created,
        client_ip=_ip(client),
        client_port=_port(client),
        server_ip=server_ip,
        server_port=server_port,
        sni=flow.server_conn.sni or flow.client_conn.sni,
        host=flow.server_conn.sni or (str(flow.server_conn.address[0])
                                      if flow.server_conn.address else None),
        error=flow.error.msg if flow.error else None,
    )


def _http(flow: http.HTTPFlow) -> Exchange:
    request = flow.request
    exchange = _base(flow, "websocket" if flow.websocket else "http")
    exchange.timestamp = request.timestamp_start or flow.timestamp_created
    exchange.scheme = request.scheme
    exchange.method = request.method
    exchange.path = request.path
    exchange.host, exchange.url = _host_and_url(request, exchange.path)
    exchange.http_version = request.http_version
    # as Headers.items(multi=True) gives them, without a generator per header
    exchange.request_headers = [(k.decode("utf-8", "surrogateescape"),
                                 v.decode("utf-8", "surrogateescape"))
                                for k, v in request.headers.fields]
    exchange.request_body = request.raw_content or b""
    if request.trailers:  # HTTP/2 or chunked: header fields after the body
        exchange.request_trailers = [(k.decode("utf-8", "surrogateescape"),
                                      v.decode("utf-8", "surrogateescape"))
                                     for k, v in request.trailers.fields]
    exchange.request_body_truncated = request.raw_content is None and bool(
        request.headers.get("content-length", "0") not in ("", "0")
    )
    if flow.response is not None:
        exchange.status_code = flow.response.status_code
        exchange.response_headers = [(k, v) for k, v in flow.response.headers.items(multi=True)]
        exchange.response_size = len(flow.response.raw_content or b"")
    if exchange.error is None and request.method == "CONNECT" and (
        exchange.status_code is None or exchange.status_code >= 400
    ):
        exchange.error = f"CONNECT failed ({exchange.status_code or 'no answer'})"
    if flow.websocket is not None:
        exchange.messages = [
            Message(bool(m.from_client), m.content, m.is_text) for m in flow.websocket.messages
        ]
    return exchange


def _host_and_url(request: http.Request, path: str) -> tuple[str, str]:
    """``request.pretty_host`` and ``request.pretty_url``, whose parsing of the authority (IDNA
    included) took most of :func:`exchange_from_flow`'s time: the URL is a prefix that depends
    on what the key holds, then the path, so the host and prefix are remembered by that key.
    ``request`` may be a stored request's view (:func:`_request_view`): mitmproxy's own
    request is then made only for a key not seen yet."""
    data = request.data
    if data.method == b"CONNECT":  # "authority" form: the URL is the authority itself
        request = _mitmproxy_request(request)
        return request.pretty_host, request.pretty_url
    key = (data.http_version, data.authority, data.headers.get("host"), data.scheme, data.host,
           data.port)
    known = _HOSTS_AND_PREFIXES.get(key)
    tail = path if path != "*" else ""
    if known is None:
        request = _mitmproxy_request(request)
        url = request.pretty_url
        known = (request.pretty_host, url[: len(url) - len(tail)])
        if len(_HOSTS_AND_PREFIXES) >= _REMEMBERED:
            _HOSTS_AND_PREFIXES.clear()
        _HOSTS_AND_PREFIXES[key] = known
    return known[0], known[1] + tail


def _mitmproxy_request(request: Any) -> http.Request:
    made = getattr(request, "made", None)
    return made() if made is not None else request  # type: ignore[no-any-return]


_HOSTS_AND_PREFIXES: dict[tuple[Any, ...], tuple[str, str]] = {}
_REMEMBERED = 4096


def _stream(flow: tcp.TCPFlow | udp.UDPFlow, kind: str) -> Exchange:
    exchange = _base(flow, kind)
    exchange.messages = [Message(bool(m.from_client), m.content) for m in flow.messages]
    return exchange


def _dns(flow: dns.DNSFlow) -> Exchange:
    exchange = _base(flow, "dns")
    questions = flow.request.questions if flow.request else []
    exchange.dns_question = questions[0].name if questions else None
    exchange.host = exchange.dns_question
    if flow.response is not None:
        exchange.status_code = flow.response.response_code
        exchange.dns_answers = _addresses(flow.response.answers)
    return exchange


def _addresses(answers: list[dns.ResourceRecord]) -> list[str]:
    """The A and AAAA addresses of a DNS answer section (malformed records skipped)."""
    found = []
    for record in answers:
        try:
            if record.type == dns.types.A:
                found.append(str(record.ipv4_address))
            elif record.type == dns.types.AAAA:
                found.append(str(record.ipv6_address))
        except (ValueError, TypeError):
            continue
    return found


def exchange_from_flow(flow: Flow) -> Exchange | None:
    """The core's view of ``flow``; None for flow types leakmap does not log."""
    if isinstance(flow, http.HTTPFlow):
        return _http(flow)
    if isinstance(flow, tcp.TCPFlow):
        return _stream(flow, "tcp")
    if isinstance(flow, udp.UDPFlow):
        return _stream(flow, "udp")
    if isinstance(flow, dns.DNSFlow):
        return _dns(flow)
    return None


def exchange_from_tls_failure(data: tls.TlsData, timestamp: float) -> Exchange:
    """A TLS handshake the client refused (a pinned app): who it tried to reach."""
    server_ip, server_port = _server(data.context.server)
    client = data.context.client
    sni = client.sni or data.context.server.sni
    return Exchange(
        flow_id=str(uuid.uuid4()),
        kind="tls",
        timestamp=client.timestamp_start or timestamp,
        client_ip=_ip(client.peername),
        client_port=_port(client.peername),
        server_ip=server_ip,
        server_port=server_port,
        sni=sni,
        host=sni or server_ip,
        error=client.error or "client refused the TLS handshake (certificate pinning?)",
    )


class OpenFlows:
    """Flows that started and have not ended: what a clean stop must still record.

    mitmproxy's ``save`` addon does the same for the flows it writes.
    """

    def __init__(self) -> None:
        self._flows: dict[str, Flow] = {}

    def add(self, flow: Flow) -> None:
        self._flows[flow.id] = flow

    def discard(self, flow: Flow) -> None:
        self._flows.pop(flow.id, None)

    def drain(self) -> list[Flow]:
        flows = list(self._flows.values())
        self._flows.clear()
        return flows


STILL_OPEN = "connection still open when the proxy stopped"


def read_flow_file(path: Path, keep: int | None = None) -> Iterator[Exchange]:
    """The exchanges of a file written by ``mitmdump -w``.  Raises ValueError where it is
    unreadable, after the flows before that point.  ``keep``: see :func:`flow_records`."""
    for record in flow_records(path, keep):
        exchange = exchange_from_record(record, path)
        if exchange is not None:
            yield exchange


# A flow file is a series of tnetstrings, one per flow: ``<length>:<payload><type>``.
_MAX_LENGTH_DIGITS = 12  # as mitmproxy's reader: a longer prefix is not a length
_UNREADABLE = "Invalid data format."  # what mitmproxy's FlowReader says of a damaged file


def _unreadable(path: Path, problem: str = _UNREADABLE) -> ValueError:
    return ValueError(f"{path}: not a readable mitmproxy flow file ({problem})")


def flow_records(path: Path, keep: int | None = None) -> Iterator[bytes]:
    """Each flow of a flow file as its stored bytes, unparsed: cutting a file into flows
    is cheap, parsing them is not, so ``leakmap analyze`` parses them in its workers
    (:func:`exchange_from_record`).  Junk where a flow should begin is passed on as a
    record of its own (:func:`_damaged_stretch`), and the flows after it are read; where no
    flow begins again (the file is cut short), ValueError after the flows before that point.

    With ``keep`` (the body cap), a flow larger than that is read value by value instead,
    and each value longer than ``keep`` bytes (a 500 MB body) is cut to its first ``keep``
    bytes, the only ones the analysis scans: memory stays bounded by the cap, not by the
    capture (:func:`_cut_record`; the flow notes the cut)."""
    with path.open("rb") as handle:
        total = os.fstat(handle.fileno()).st_size
        while True:
            start = handle.tell()
            prefix = handle.read(1)
            if not prefix:
                return
            while prefix[-1:].isdigit() and len(prefix) <= _MAX_LENGTH_DIGITS:
                digit = handle.read(1)
                if not digit:  # the file ends inside the prefix
                    break
                prefix += digit
            size = int(prefix[:-1]) if prefix.endswith(b":") and len(prefix) >= 2 else -1
            # not a length, or one past the end (cut short, or a length that lies)
            if size < 0 or handle.tell() + size + 1 > total:
                yield _damaged_stretch(handle, path, start, total, keep)
                continue
            if keep is not None and size > keep + _CUT_SLACK:
                yield _cut_record(handle, size, keep, path)
                continue
            body = handle.read(size + 1)  # the payload and its type byte
            if len(body) != size + 1:
                raise _unreadable(path)
            resume = _next_record(handle, start + 1, total) if body[-1:] != b"}" else None
            if resume is not None:  # not a flow (a state is a dict): a length that lies...
                yield _damaged_stretch(handle, path, start, total, keep, resume)
                continue
            if keep is not None and size > _CUT_SLACK and _crowded(body):
                handle.seek(-len(body), os.SEEK_CUR)
                yield _cut_record(handle, size, keep, path)
                continue
            yield prefix + body


def _damaged_stretch(handle: BinaryIO, path: Path, start: int, total: int,
                     keep: int | None, resume: int | None = None) -> bytes:
    """The bytes from ``start`` (where a flow should begin and none does: junk written into
    the file, a record whose length lies) to the next place a whole flow begins, cut to the
    body cap; the handle is left there.  Returned as a record: it is logged as an
    unreadable flow, its bytes searched (:func:`exchange_from_record`), and the flows after
    it are read.  Where no flow begins again (a file cut short), ValueError.  ``resume``:
    where the next flow begins, if the caller looked already."""
    if resume is None:
        resume = _next_record(handle, start + 1, total)
    if resume is None:
        raise _unreadable(path)
    handle.seek(start)
    stretch = handle.read(min(resume - start, keep if keep is not None else _STRETCH_KEPT))
    handle.seek(resume)
    return stretch


_STRETCH_KEPT = Limits().max_body_bytes
_RECORD_START = re.compile(rb"(\d{1,%d}):" % _MAX_LENGTH_DIGITS)


def _next_record(handle: BinaryIO, position: int, total: int) -> int | None:
    """Where, from ``position`` on, the next stored flow begins (a length, a dict of that
    length that mitmproxy's tnetstring reads, with a version, type and id), or None.  One pass of a
    regular expression over the file, mapped (not read); a candidate costs a look at its
    last byte, and only one that ends as a dict does is parsed."""
    if position >= total:
        return None
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        while (candidate := _RECORD_START.search(view, position)) is not None:
            end = candidate.end() + int(candidate.group(1))
            if end < total and view[end] == _DICT_TYPE and _RECORD_START.match(
                    view, candidate.end()) and _is_flow_state(view[candidate.start() : end + 1]):
                return candidate.start()
            position = candidate.start() + 1  # "99" + "1234:": the length may start later
    return None


_DICT_TYPE = ord("}")


def _is_flow_state(record: bytes) -> bool:
    """Whether ``record`` is a whole flow's state (its version, type and id), not a dict
    inside one (a connection, a DNS question)."""
    try:
        state = tnetstring_loads(record)
    except (ValueError, TypeError, IndexError, RecursionError):
        return False
    return isinstance(state, dict) and all(
        name in state or name.encode() in state for name in ("version", "type", "id"))


_CUT_SLACK = 1 << 20  # a flow at most this much over the cap is read whole
_MAX_ITEMS = 100_000  # entries of a list kept by the reader of a flow over the cap
_MAX_ENTRIES = 1_000_000  # entries of all its lists and dicts kept by that reader
# past them, still the names of the flow and its parts, and this many entries of lists and
# dicts of at most _TINY bytes (an address, a header)
_FLOW_PARTS = frozenset({"request", "response", "websocket", "client_conn", "server_conn",
                         "error"})
_GRACE, _TINY = 100_000, 256
_SERVER_MESSAGES = 1_000  # the server's messages kept of a flow over the cap (content cut)
# the parts of a flow's state the analysis reads: the rest spends a budget of _GRACE
_ANALYSED = _FLOW_PARTS | {"messages", "type", "id", "version", "timestamp_created"}
_LONGEST_SCALAR = 1 << 16  # a longer number (or true, false, null) is damage, not a flow
CUT_KEY = "leakmap_cut"  # in a cut flow's metadata: [where, bytes in the capture, bytes kept]...


def _crowded(payload: bytes) -> bool:
    """Whether a flow within the cap may hold more values than :data:`_MAX_ENTRIES`, about
    one per ``:`` (those in its bodies counted too): 17 MB of ``0:]`` are 5.8 million
    lists, 370 MB of objects, read whole."""
    return payload.count(b":") > _MAX_ENTRIES


def _cut_record(handle: BinaryIO, size: int, keep: int, path: Path) -> bytes:
    """The flow whose ``size``-byte payload starts at the handle's position, as a record
    whose values longer than ``keep`` bytes hold only their first ``keep`` bytes; where
    each was cut goes in its metadata (:data:`CUT_KEY`), for :func:`exchange_from_record`."""
    start = handle.tell()
    reader = _CutReader(handle, keep, path)
    try:
        if reader.peek_type(start, size) != b"}":
            raise _unreadable(path)
        state = reader.items(start + size, "", as_dict=True)
        handle.seek(start + size + 1)
    except RecursionError as e:
        raise _unreadable(path, "nested too deeply") from e
    metadata = state.get("metadata")
    if reader.cuts and isinstance(metadata, dict):
        metadata[CUT_KEY] = reader.cuts
    return tnetstring_dumps(state)


class _CutReader:
    """Reads the values of one flow over the cap from its capture, each cut to what the
    analysis reads of it: a value to ``keep`` bytes; the messages the client sent to
    ``Limits.max_decoded_bytes`` in all (:func:`_message_leaves` scans no more); the
    server's messages to nothing (never analysed). Each cut goes in :attr:`cuts`:
    ``[where, bytes in the capture, bytes kept]``."""

    def __init__(self, handle: BinaryIO, keep: int, path: Path) -> None:
        self.handle, self.keep, self.path = handle, keep, path
        self.cuts: list[list[Any]] = []
        self.sent_left = Limits.max_decoded_bytes  # bytes of the client's messages still read
        self.entries_left = _MAX_ENTRIES  # entries of lists and dicts still read
        self.aside_left = _GRACE  # the same, for what the analysis does not read

    def peek_type(self, start: int, length: int) -> bytes:
        """The type byte of the value whose ``length``-byte payload starts at ``start``."""
        self.handle.seek(start + length)
        tag = self.handle.read(1)
        if len(tag) != 1:
            raise _unreadable(self.path)
        self.handle.seek(start)
        return tag

    def items(self, end: int, where: str, as_dict: bool) -> Any:
        """The entries of a dict or list whose payload ends at ``end``.

        A list keeps its first :data:`_MAX_ITEMS` entries (3 million headers or WebSocket
        messages of one byte would be gigabytes of objects; the analysis reads at most
        ``max_leaves`` values anyway), all of them together the first :data:`_MAX_ENTRIES`
        (20 million empty lists in 400 lists were 6 GB), except the names of the flow and
        of its parts (request, websocket...), without which it is no flow; a cut is noted
        like a long value's."""
        handle = self.handle
        entries: list[Any] = []
        start = handle.tell()
        structural = as_dict and (where == "" or where in _FLOW_PARTS)
        server_at = {"messages": 0, "websocket.messages": 1}.get(where)  # from_client's place
        servers = 0  # the server's messages seen in this list
        while handle.tell() < end:
            if len(entries) >= _MAX_ITEMS or (self.entries_left <= 0 and not structural):
                self.cuts.append([where, end - start, handle.tell() - start])
                handle.seek(end)
                if as_dict and len(entries) % 2:
                    entries.pop()  # a name without its value
                break
            self.entries_left -= 1
            # where the entry sits: a dict's value by its key (the entry before it), a list's by index
            name = entries[-1] if as_dict and len(entries) % 2 else len(entries)
            at = f"{where}.{name}" if where else str(name)
            if where == "" and as_dict and len(entries) % 2 and entries[-1] not in _ANALYSED:
                entries.append(self._aside(end, at))  # metadata, comment...: its own budget
                continue
            # a message's content comes right after whether the client sent it
            cap = self._content_cap(entries[-1]) if _message_index(at) is not None else None
            left = self.entries_left
            entries.append(self.value(end, at, cap, _is_message(at)))
            if server_at is not None and _from_server(entries[-1], server_at):
                servers += 1
                if servers > _SERVER_MESSAGES:  # not analysed: past these, not even kept
                    entries.pop()
                    self.entries_left = left
        if servers > _SERVER_MESSAGES:
            self.cuts.append([f"{where} (the server's)", servers, _SERVER_MESSAGES])
        if handle.tell() != end:
            raise _unreadable(self.path)
        if not as_dict:
            return entries
        if len(entries) % 2:
            raise _unreadable(self.path)
        try:
            return dict(zip(entries[::2], entries[1::2], strict=True))
        except TypeError as e:  # an unhashable key
            raise _unreadable(self.path) from e

    def _aside(self, end: int, where: str) -> Any:
        """A value of the flow that the analysis does not read (its metadata, a comment),
        within a budget of its own: it cannot spend what the request's is."""
        analysed, self.entries_left = self.entries_left, self.aside_left
        try:
            return self.value(end, where)
        finally:
            self.aside_left, self.entries_left = self.entries_left, analysed

    def _content_cap(self, from_client: object) -> int:
        return min(self.keep, self.sent_left) if from_client else 0  # truthy, as mitmproxy reads it

    def value(self, limit: int, where: str, cap: int | None = None, message: bool = False) -> Any:
        """One value, read from the handle; a long one cut to ``keep`` bytes, a string or
        bytes to ``cap`` where given (a message's content), and a ``message`` (a list)
        entry by entry, so that its content is."""
        handle = self.handle
        prefix = handle.read(_MAX_LENGTH_DIGITS + 1)
        colon = prefix.find(b":")
        if colon < 1 or not prefix[:colon].isdigit():
            raise _unreadable(self.path)
        start = handle.tell() - len(prefix) + colon + 1
        length = int(prefix[:colon])
        if start + length >= limit:
            raise _unreadable(self.path)
        small = length <= self.keep + _CUT_SLACK
        tag = self.peek_type(start, length) if cap is not None or message or not small else b""
        if tag in (b",", b";") and cap is not None:
            value = self._string(start, length, min(length, cap), tag, where)
            if cap:  # the client's: what the analysis reads of it is spent
                self.sent_left -= len(value.encode() if isinstance(value, str) else value)
            return value
        if small and not (message and tag == b"]"):  # small enough: read and parsed whole
            data = self._read(start, length)
            if data[-1:] not in (b"}", b"]") or self._spend(data):
                return self._parse(data, length)
            tag = data[-1:]  # a list or dict of more entries than are left: entry by entry
            handle.seek(start)
        if tag in (b"}", b"]"):
            value = self.items(start + length, where, as_dict=tag == b"}")
        elif tag in (b",", b";"):
            return self._string(start, length, self.keep, tag, where)
        elif length <= _LONGEST_SCALAR:  # a number, true, false, null: read whole
            return self._whole(start, length)
        else:  # a number of megabytes: no flow holds one
            raise _unreadable(self.path, f"a value of {length} bytes at {where}")
        handle.seek(start + length + 1)
        return value

    def _string(self, start: int, length: int, kept: int, tag: bytes, where: str) -> bytes | str:
        """The first ``kept`` bytes of a string or bytes value (the cut noted if any)."""
        if kept >= length:
            return self._whole(start, length)  # type: ignore[no-any-return]
        self.handle.seek(start)
        value = _kept(self.handle.read(kept), tag == b";", self.path)
        self.cuts.append([where, length, len(value.encode() if isinstance(value, str) else value)])
        self.handle.seek(start + length + 1)
        return value

    def _spend(self, data: bytes) -> bool:
        """Whether the entries of the list or dict ``data`` (about one per ``:``, those in
        its strings counted too) are within what is left of :data:`_MAX_ENTRIES`: then
        they are spent."""
        entries = data.count(b":")
        if self.entries_left - entries < (-_GRACE if len(data) <= _TINY else 0):
            return False
        self.entries_left -= entries
        return True

    def _whole(self, start: int, length: int) -> Any:
        """The value whose ``length``-byte payload starts at ``start``, read and parsed whole."""
        return self._parse(self._read(start, length), length)

    def _read(self, start: int, length: int) -> bytes:
        """The ``length``-byte payload at ``start`` and its type byte."""
        self.handle.seek(start)
        data = self.handle.read(length + 1)
        if len(data) != length + 1:
            raise _unreadable(self.path)
        return data

    def _parse(self, data: bytes, length: int) -> Any:
        try:
            return tnetstring_loads(b"%d:%b" % (length, data))
        except (ValueError, TypeError, IndexError) as e:
            raise _unreadable(self.path) from e


def _kept(data: bytes, text: bool, path: Path) -> bytes | str:
    """The first bytes of a cut value: for text, up to the last whole character."""
    if not text:
        return data
    for back in range(4):  # a UTF-8 character has at most 4 bytes
        try:
            return data[: len(data) - back].decode("utf8")
        except UnicodeDecodeError:
            continue
    raise _unreadable(path)


def tnetstring_dumps(value: object) -> bytes:
    """``value`` as a tnetstring, the same bytes as mitmproxy's ``tnetstring.dumps``, in a
    third of its time: the parts are collected front to back, each container's length
    filled in once its content is known (``addons/capture.py`` writes every live flow)."""
    return b"".join(tnetstring_parts([value]))


def tnetstring_parts(values: list[object]) -> list[bytes]:
    """The tnetstrings of ``values``, one after the other, as parts to join or write in
    order: a body is one part, the very bytes object of the state (not copied)."""
    parts: list[bytes] = []
    for value in values:
        _dump_into(value, parts)
    return parts


def _dump_into(value: Any, parts: list[bytes]) -> int:
    """Append ``value``'s tnetstring to ``parts``; its length.  Exact types first (a flow's
    state is mostly bytes, str, int and dicts); subclasses fall through to isinstance."""
    kind = type(value)
    if kind is bytes or kind is str or kind in _OUT_OF_BAND:
        data: bytes = value.encode("utf8") if kind is str else value
        head = b"%d:" % len(data)
        parts += (head, data, b";" if kind is str else b",")
        return len(head) + len(data) + 1
    if kind is dict:
        slot = len(parts)
        parts.append(b"")  # the length, once known
        size = 0
        for key, item in reversed(value.items()):  # last first, as mitmproxy writes them
            size += _dump_into(key, parts) + _dump_into(item, parts)
        return _close(parts, slot, size, b"}")
    if value is None:
        parts.append(b"0:~")
        return 3
    if kind is bool:
        parts.append(b"4:true!" if value else b"5:false!")
        return len(parts[-1])
    if kind is int:
        data = str(value).encode()
        parts.append(b"%d:%b#" % (len(data), data))
        return len(parts[-1])
    if kind is list or kind is tuple:
        slot = len(parts)
        parts.append(b"")
        size = 0
        for item in value:
            size += _dump_into(item, parts)
        return _close(parts, slot, size, b"]")
    if kind is float:
        data = repr(value).encode()
        parts.append(b"%d:%b^" % (len(data), data))
        return len(parts[-1])
    return _dump_subclass(value, parts)


_OUT_OF_BAND = (memoryview, bytearray)  # a body as the capture process receives it (unpickled)


def _close(parts: list[bytes], slot: int, size: int, end: bytes) -> int:
    parts[slot] = b"%d:" % size
    parts.append(end)
    return len(parts[slot]) + size + 1


def _dump_subclass(value: Any, parts: list[bytes]) -> int:
    """An IntEnum, a str or dict subclass...: dumped as its base type, as mitmproxy does."""
    bases: tuple[Any, ...] = (bool, int, float, bytes, str, dict, list, tuple)
    for base in bases:
        if isinstance(value, base):
            return _dump_into(base(value), parts)
    raise ValueError(f"unserializable object: {value} ({type(value)})")


def tnetstring_loads(data: bytes) -> object:
    """The value of the tnetstring ``data`` begins with, as mitmproxy's ``tnetstring.loads``
    gives it; ValueError (or TypeError for an unhashable key) if it is not one.

    mitmproxy's parser finds each length prefix one byte at a time in Python,
    on slices of a memoryview: about 450 µs for a flow with a 2 KB body, more
    than building the flow.  This one finds each prefix with ``bytes.index``.
    It is stricter in one way only: a length must be plain digits (mitmproxy's
    ``int()`` would also take a sign or spaces), as its file reader requires
    of the outer one anyway.
    """
    return _tnetstring(data, 0, len(data))[0]


def _tnetstring(data: bytes, start: int, limit: int) -> tuple[object, int]:
    """(value, position after it) of the tnetstring at ``start``, inside ``data[:limit]``."""
    colon = data.index(b":", start, limit)
    prefix = data[start:colon]
    if not prefix.isdigit():
        raise ValueError(f"not a tnetstring: invalid length prefix: {prefix[:20]!r}")
    begin = colon + 1
    end = begin + int(prefix)
    if end >= limit:
        raise ValueError(f"not a tnetstring: invalid length prefix: {prefix!r}")
    tag = data[end]
    if tag == 0x2C:  # ,
        value: object = data[begin:end]
    elif tag == 0x3B:  # ;
        value = data[begin:end].decode("utf8")
    elif tag == 0x7D:  # } (a container's bytes are not copied: its body may be 100 MB)
        items: dict[object, object] = {}
        while begin < end:
            key, begin = _tnetstring(data, begin, end)
            items[key], begin = _tnetstring(data, begin, end)
        value = items
    elif tag == 0x5D:  # ]
        entries = []
        while begin < end:
            entry, begin = _tnetstring(data, begin, end)
            entries.append(entry)
        value = entries
    else:
        value = _scalar(tag, data[begin:end])
    return value, end + 1


def _scalar(tag: int, payload: bytes) -> object:
    if tag == 0x23:  # #
        return int(payload)
    if tag == 0x5E:  # ^
        return float(payload)
    if tag == 0x21 and payload in (b"true", b"false"):  # !
        return payload == b"true"
    if tag == 0x7E and not payload:  # ~
        return None
    raise ValueError(f"not a tnetstring: invalid value of type {chr(tag)!r}: {payload[:20]!r}")


def _stored_state(record: bytes, path: Path) -> dict:
    try:
        state = tnetstring_loads(record)
    except (ValueError, TypeError, IndexError, RecursionError) as e:
        raise _unreadable(path) from e
    if not isinstance(state, dict):
        raise _unreadable(path, f"Invalid flow: loaded={state!r:.200}")
    with _flow_errors(path):
        return compat.migrate_flow(state)


@contextlib.contextmanager
def _flow_errors(path: Path) -> Iterator[None]:
    """mitmproxy's complaints about a stored flow as one ValueError naming ``path``."""
    try:
        yield
    except ValueError as e:
        raise _unreadable(path, str(e)) from e
    except Exception as e:  # a record that is tnetstring but no flow (KeyError, TypeError...)
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e


def exchange_from_record(record: bytes, path: Path) -> Exchange | None:
    """The exchange of the flow stored as ``record`` (one of :func:`flow_records`), as
    :func:`exchange_from_flow` makes it of the flow mitmproxy's own reader builds; None for
    a flow leakmap does not log.

    A record that is framed as a flow but is none mitmproxy can read (a version it does not
    know, a state of the wrong shape) is logged as a flow with that error, and its own
    bytes are searched as its body (:func:`_unreadable_record`). mitmproxy's reader stops
    there; leakmap goes on to the next record, so that one crafted record cannot hide the
    flows after it.
    """
    try:
        return _exchange_from_record(record, path)
    except ValueError as e:
        return _unreadable_record(record, str(e).removeprefix(f"{path}: "))
    except Exception as e:  # crafted to break a reader (a leakmap bug): still a flow, named
        return _unreadable_record(record, f"{type(e).__name__}: {e}")


def _unreadable_record(record: bytes, problem: str) -> Exchange:
    """A flow in the capture all the same: an id made of its bytes (the same in every run),
    the problem, and its bytes to search."""
    flow_id = str(uuid.uuid5(uuid.NAMESPACE_URL,
                             f"leakmap-record:{hashlib.sha256(record).hexdigest()}"))
    return Exchange(flow_id=flow_id, kind="http", timestamp=0.0, request_body=record,
                    request_headers=[("Content-Type", "application/octet-stream")],
                    error=f"unreadable flow record: {problem}",
                    reader_notes=["an unreadable flow record: its bytes searched as they are"])


def _exchange_from_record(record: bytes, path: Path) -> Exchange | None:
    """:func:`exchange_from_record`; ValueError naming ``path`` if ``record`` is no flow.

    mitmproxy builds a whole flow from its stored state through generic,
    type-checked reflection: some 600 µs a flow, more than parsing the bytes.
    For an HTTP flow (no WebSocket) only its request is built that way, the
    rest is read from the state as :func:`_http` needs it (:func:`_http_view`);
    a state that does not read so is left to mitmproxy's reader, which decides.
    The test suite compares both ways on varied flows.
    """
    state = _stored_state(record, path)
    metadata = state.get("metadata")
    cuts = metadata.pop(CUT_KEY, None) if isinstance(metadata, dict) else None
    exchange = None
    if _plain_http(state):
        try:
            exchange = _http(_http_view(state))  # type: ignore[arg-type]
        except Exception:  # a damaged state: mitmproxy's reader says what is wrong with it
            state = _stored_state(record, path)  # the view consumed part of it
            if isinstance(state.get("metadata"), dict):
                state["metadata"].pop(CUT_KEY, None)
    if exchange is None:
        with _flow_errors(path):
            flow = Flow.from_state(state)
        exchange = exchange_from_flow(flow)
    if exchange is not None and isinstance(cuts, list):
        note_cuts(exchange, cuts)
    return exchange


def exchange_from_state(state: dict[str, Any]) -> Exchange | None:
    """The exchange of a live flow from the state the proxy took of it
    (``addons/handover.py``), as :func:`exchange_from_flow` makes it of the flow itself
    (tests/test_handover.py compares the two); None for a flow leakmap does not log."""
    if _plain_http(state):
        return _http(_http_view(state))  # type: ignore[arg-type]
    return exchange_from_flow(Flow.from_state(state))


def _plain_http(state: dict[str, Any]) -> bool:
    """An HTTP flow without a WebSocket: the one kind read from its state directly."""
    return state.get("type") == "http" and state.get("websocket") is None


def note_cuts(exchange: Exchange, cuts: list[Any]) -> None:
    """What :func:`_cut_record` left out of the flow of ``exchange``: one note per value,
    and the sizes the flow had in its capture."""
    sent = 0  # bytes the client sent that were cut off
    numbers = _client_numbers(exchange.messages)
    beyond = f"messages beyond {Limits.max_decoded_bytes} bytes not scanned"  # as the decoder says
    for cut in cuts:
        if not (isinstance(cut, list) and len(cut) == 3 and isinstance(cut[0], str)
                and isinstance(cut[1], int) and isinstance(cut[2], int)):
            continue  # not written by this reader: a crafted metadata entry
        where, length, kept = cut
        index = _message_index(where)
        if where == "response.content":  # not analysed: only its size counts
            exchange.response_size = length
        elif where.endswith(" (the server's)"):
            exchange.reader_notes.append(f"{length - kept} of the server's {length} messages "
                                         "not read (not analysed)")
        elif index is not None and index < len(exchange.messages):
            if exchange.messages[index].from_client:  # the server's are not analysed either
                sent += length - kept
                if kept:
                    exchange.reader_notes.append(
                        scanned_note(f"message {numbers[index]}", length, kept))
                elif beyond not in exchange.reader_notes:  # one note for all of them
                    exchange.reader_notes.append(beyond)
        elif where == "request.content":
            sent += length - kept
            exchange.reader_notes.append(scanned_note("body", length, kept))
        else:  # a header or another value: noted, the flow's size stays
            exchange.reader_notes.append(
                f"{where} of {length} bytes: only the first {kept} read from the capture")
    if sent:
        exchange.sent_size = exchange.request_size + sent


def _client_numbers(messages: list[Message]) -> list[int]:
    """Each message's number among the client's, as the decoder counts them."""
    numbers, sent = [], 0
    for message in messages:
        numbers.append(sent)
        sent += message.from_client
    return numbers


def _from_server(message: object, at: int) -> bool:
    """Whether a stored message (a list) is the server's: ``from_client`` false."""
    return isinstance(message, list) and len(message) > at and not message[at]


def _is_message(where: str) -> bool:
    """Whether ``where`` is a message of a flow (``messages.N``, ``websocket.messages.N``)."""
    head, _, index = where.rpartition(".")
    return index.isdigit() and (head == "messages" or head.endswith(".messages"))


def _message_index(where: str) -> int | None:
    """N of a cut message's content: ``messages.N.1`` (TCP, UDP: from_client, content,
    timestamp) or ``websocket.messages.N.2`` (type, from_client, content...)."""
    parts = where.split(".")
    content_at = "2" if parts[0] == "websocket" else "1"
    if len(parts) >= 3 and parts[-3] == "messages" and parts[-2].isdigit() \
            and parts[-1] == content_at:
        return int(parts[-2])
    return None


def _http_view(state: dict) -> SimpleNamespace:
    """What :func:`_http` reads of an HTTP flow, from its stored state: the request built
    by mitmproxy (its host and URL logic), the connections, error and response as read."""
    response = state["response"]
    return SimpleNamespace(
        id=_typed(state["id"], str),
        timestamp_created=_typed(state["timestamp_created"], float, int),
        client_conn=_connection_view(state["client_conn"]),
        server_conn=_connection_view(state["server_conn"]),
        error=SimpleNamespace(msg=_typed(state["error"]["msg"], str)) if state["error"] else None,
        request=_request_view(state["request"]),
        response=None if response is None else SimpleNamespace(
            status_code=_typed(response["status_code"], int),
            headers=http.Headers(tuple(tuple(field) for field in response["headers"])),
            raw_content=_typed(response["content"], bytes, type(None))),
        websocket=None,
    )


def _request_view(state: dict) -> SimpleNamespace:
    """What :func:`_http` reads of a request, from its stored state, each value of the type
    mitmproxy's ``Request.from_state`` checks, decoded as its properties decode them; that
    reflective ``from_state`` took about 90 µs of a flow's 100 (``made`` calls it, for a
    host and URL not seen yet: see :func:`_host_and_url`)."""
    headers = http.Headers(tuple((_typed(name, bytes), _typed(value, bytes))
                                 for name, value in state["headers"]))
    data = SimpleNamespace(
        method=_typed(state["method"], bytes), scheme=_typed(state["scheme"], bytes),
        http_version=_typed(state["http_version"], bytes),
        authority=_typed(state["authority"], bytes), host=_typed(state["host"], str),
        port=_typed(state["port"], int), path=_typed(state["path"], bytes), headers=headers)
    return SimpleNamespace(
        data=data, headers=headers,
        method=data.method.decode("utf-8", "surrogateescape").upper(),
        scheme=data.scheme.decode("utf-8", "surrogateescape"),
        path=data.path.decode("utf-8", "surrogateescape"),
        http_version=data.http_version.decode("utf-8", "surrogateescape"),
        raw_content=_typed(state["content"], bytes, type(None)),
        trailers=None if state.get("trailers") is None else http.Headers(
            tuple((_typed(name, bytes), _typed(value, bytes)) for name, value in state["trailers"])),
        timestamp_start=_typed(state["timestamp_start"], float, int),
        made=lambda: http.Request.from_state({**state, "content": None}))  # the URL needs no body


def _connection_view(state: dict) -> SimpleNamespace:
    def address(value: list | None) -> tuple | None:
        return tuple(value) if value else None

    return SimpleNamespace(peername=address(state["peername"]), address=address(state.get("address")),
                           sni=_typed(state["sni"], str, type(None)))


def _typed(value: Any, *types: type) -> Any:
    if type(value) not in types:
        raise TypeError(f"{value!r:.100} is not {' or '.join(t.__name__ for t in types)}")
    return value
