"""HAR 1.2 files to :class:`Exchange` objects.

Each entry's ``serverIPAddress`` is the server address.  Flow ids are derived
from the file's SHA-256 and the entry's index, so analysing the same file
twice gives the same ids.  Browser extras (``_webSocketMessages``) are read
where present.
"""

from __future__ import annotations

import array
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import itertools
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import SplitResult, parse_qsl, urlencode

from leakmap.core.exchange import Exchange, Message, split_url


def _timestamp(text: Any) -> float | None:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # HAR requires an offset; read a bare time as UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()  # before the year 1 in UTC too: Pipeline.inspect notes it


def _object(value: Any) -> dict[str, Any]:
    """A HAR object, or an empty one where the file holds something else."""
    return value if isinstance(value, dict) else {}


def _server_ip(text: Any) -> str | None:
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(str(text).strip("[]")))
    except ValueError:
        return None


def _body(post: dict[str, Any]) -> bytes:
    text = _text(post.get("text"))
    if text is not None:
        if post.get("encoding") == "base64":
            try:
                return base64.b64decode(text)
            except (binascii.Error, ValueError):
                return text.encode("utf-8", "surrogateescape")
        return text.encode("utf-8", "surrogateescape")
    params = post.get("params")
    pairs = [f"{p.get('name', '')}={p.get('value', '')}"
             for p in (params if isinstance(params, list) else []) if isinstance(p, dict)]
    pairs += [f"{p.get('name', '')}.fileName={p['fileName']}"  # an upload's file name
              for p in (params if isinstance(params, list) else [])
              if isinstance(p, dict) and p.get("fileName")]
    return "&".join(pairs).encode("utf-8", "surrogatepass")


def _text(value: Any) -> str | None:
    """A HAR ``text`` as text: a number or a JSON document written as one (not as a
    string, against the format) is its JSON text."""
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError):  # nested as deeply as json.loads could read it
        return ""


def _headers(items: Any) -> list[tuple[str, str]]:
    if isinstance(items, dict):  # {"name": "value"}, against the format
        return [(str(name), _value(value)) for name, value in items.items()]
    return [
        (str(item["name"]), _value(item.get("value", "")))
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict) and "name" in item
    ]


def _value(value: Any) -> str:
    text = _text(value)
    return "" if text is None else text


def _url(request: dict[str, Any]) -> str:
    """The request's URL, with the ``queryString`` pairs it does not hold appended (an
    exporter may list them there only)."""
    url = str(request.get("url", ""))
    pairs = _headers(request.get("queryString"))
    if not pairs:
        return url
    query = _split(url).query
    written = {*parse_qsl(query, keep_blank_values=True), *_raw_pairs(query, "&")}
    missing = [(name, value) for name, value in pairs if value and (name, value) not in written]
    if not missing:
        return url
    return f"{url}{'&' if '?' in url else '?'}{urlencode(missing)}"


def _raw_pairs(text: str, separator: str) -> set[tuple[str, str]]:
    """The ``name=value`` pairs of ``text`` as written (a HAR may list them undecoded)."""
    return {(name.strip(), value) for name, _, value in
            (part.partition("=") for part in text.split(separator))}


def _cookie_header(request: dict[str, Any], headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A Cookie header of the ``cookies`` pairs the headers do not hold."""
    sent = {pair for name, value in headers if name.lower() == "cookie"
            for pair in _raw_pairs(value, ";")}
    missing = [(name, value) for name, value in _headers(request.get("cookies"))
               if value and (name, value) not in sent]
    if not missing:
        return []
    return [("Cookie", "; ".join(f"{name}={value}" for name, value in missing))]


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd")  # gzip, zstd


def _still_encoded(body: bytes) -> bool:
    """The exporter kept the compressed bytes (gzip or zstd magic, or no text at all)."""
    if body.startswith(_COMPRESSED_MAGIC):
        return True
    try:
        body[:4096].decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < 4092  # not just a character cut at the window's end
    return False


def _request_headers(request: dict[str, Any], body: bytes) -> list[tuple[str, str]]:
    headers = _headers(request.get("headers"))
    headers += _cookie_header(request, headers)
    if not _still_encoded(body):
        # HAR stores bodies decoded: their Content-Encoding no longer applies
        headers = [(name, value) for name, value in headers if name.lower() != "content-encoding"]
    mime = _object(request.get("postData")).get("mimeType")
    if mime and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("content-type", str(mime)))
    return headers


def _websocket(entry: dict[str, Any]) -> list[Message]:
    messages = []
    items = entry.get("_webSocketMessages")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            data = _value(item.get("data", ""))
            raw = data.encode("utf-8", "surrogateescape")
            if item.get("opcode") == 2:
                with contextlib.suppress(binascii.Error, ValueError):
                    raw = base64.b64decode(data)
            messages.append(Message(item.get("type") == "send", raw, item.get("opcode") == 1))
    return messages


def _split(url: str) -> SplitResult:
    try:
        return split_url(url)
    except ValueError:  # "Invalid IPv6 URL": the decoder notes and scans it as text
        return SplitResult("", "", "", "", "")


def _port(parts: SplitResult) -> int | None:
    try:
        explicit = parts.port
    except ValueError:  # out of range
        return None
    return explicit or {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)


def _problems(entry: dict[str, Any], timestamp: float | None, status: Any) -> str | None:
    found = []
    if timestamp is None:
        found.append(f"startedDateTime {str(entry.get('startedDateTime'))[:40]!r} is not a time")
    if not isinstance(entry.get("request"), dict):
        found.append("entry has no request object")
    if not status:
        found.append("no response")
    return "; ".join(found) or None


def exchange_from_entry(entry: dict[str, Any], flow_id: str) -> Exchange:
    """One HAR entry.  A malformed part is left out and named in ``error``."""
    request = _object(entry.get("request"))
    response = _object(entry.get("response"))
    url = _url(request)
    parts = _split(url)
    messages = _websocket(entry)
    status = response.get("status")
    body = _body(_object(request.get("postData")))
    if not isinstance(entry.get("request"), dict | None):  # a string or list: its text searched
        body = (_text(entry.get("request")) or "").encode("utf-8", "surrogatepass")
    timestamp = _timestamp(entry.get("startedDateTime"))
    size = _object(response.get("content")).get("size")
    return Exchange(
        flow_id=flow_id,
        kind="websocket" if messages else "http",
        timestamp=timestamp if timestamp is not None else 0.0,
        server_ip=_server_ip(entry.get("serverIPAddress")),
        server_port=_port(parts),
        host=parts.hostname,
        sni=parts.hostname if parts.scheme in ("https", "wss") else None,
        scheme=parts.scheme or None,
        method=str(request.get("method", "")) or None,
        url=url or None,
        path=parts.path,
        http_version=str(request.get("httpVersion", "")) or None,
        request_headers=_request_headers(request, body),
        request_body=body,
        status_code=status if isinstance(status, int) and status > 0 else None,
        response_headers=_headers(response.get("headers")),
        response_size=size if isinstance(size, int) and size >= 0 else None,
        messages=messages,
        error=_problems(entry, timestamp, status),
    )


def read_har(path: Path, keep: int | None = None) -> Iterator[Exchange]:
    """Exchanges of a HAR file.  Raises ValueError if it is not HAR.

    The file is parsed whole with the standard json module: a streaming
    parser (ijson) was measured 20 times slower on large bodies and built
    gigabytes for deeply nested junk (docs/performance.md).  With ``keep`` (the
    body cap), a file larger than :data:`BIG_HAR`, or one that is not JSON as a whole (a
    broken entry, a cut end), is read entry by entry
    (:func:`har_entries`), each entry parsed alone, and a string that decodes to
    more than the cap (four thirds of it: base64) keeps about that much; a body
    is then cut to the cap and noted.  Memory stays bounded by the largest entry
    within the cap, not by a 500 MB body or by a file of many bodies.
    """
    if keep is not None and path.stat().st_size > BIG_HAR:
        yield from _read_large_har(path, keep)
        return
    raw = path.read_bytes()
    try:
        document: Any = json.loads(raw) if _parse_whole(raw) else _BROKEN
    except (ValueError, RecursionError):
        # not JSON as a whole (a broken entry, a cut end: the error holds all of its text),
        # or JSON that json.loads refuses in one entry (nested too deeply, a number of
        # 5,000 digits): each entry alone, so that the others are logged
        document = _BROKEN
    if document is _BROKEN:  # what can be read of it, entry by entry
        del raw
        yield from _read_large_har(path, keep if keep is not None else path.stat().st_size)
        return
    try:
        entries = document["log"]["entries"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a HAR 1.2 file ({_short(e)})") from e
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a HAR 1.2 file (log.entries is not a list)")
    file_sha256 = hashlib.sha256(raw).hexdigest()
    del raw
    for index in range(len(entries)):
        entry, entries[index] = entries[index], None  # let each entry go once it is read
        yield _exchange_or_note(entry, index, _flow_id(file_sha256, index))


def _parse_whole(raw: bytes) -> bool:
    """Whether ``json.loads`` may read the HAR ``raw`` at once: it names ``entries`` once
    (json.loads keeps the last of repeated names, and a second, empty list must not hide
    the first) and has no more brackets or strings than one entry may hold
    (:data:`MAX_CONTAINERS`, :data:`MAX_STRINGS`; brackets and quotes in strings are counted
    too).  Else the entry reader decides, entry by entry."""
    return (raw.count(b'"entries"') < 2 and raw.count(b"{") + raw.count(b"[") <= MAX_CONTAINERS
            and raw.count(b'"') // 2 <= MAX_STRINGS)


def _read_large_har(path: Path, keep: int) -> Iterator[Exchange]:
    """:func:`read_har` of a large file, or of one that is not JSON as a whole: hashed first
    (the flow ids need the file's digest), then read entry by entry.  An entry that is not
    JSON is a flow with a note; where the file stops being HAR, the entries before are kept
    and ValueError says where."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    file_sha256 = digest.hexdigest()
    with path.open("rb") as handle:
        # a base64 body (HAR's "encoding") takes 4 characters for 3 bytes
        cut = keep * 4 // 3 + 4
        entries = har_entries(handle, cut, _CHUNK)
        index = 0
        while True:
            try:
                text, cuts, oversized = next(entries)
            except StopIteration:
                return
            except ValueError as e:
                after = f" after {index} entries" if index else ""
                raise ValueError(f"{path}: not a HAR 1.2 file{after} ({_short(e)})") from e
            flow_id = _flow_id(file_sha256, index)
            try:
                if oversized:
                    raise ValueError(f"over {cut + 2 * ENTRY_SLACK} bytes, {MAX_CONTAINERS} "
                                     f"objects and arrays or {MAX_STRINGS} strings once its "
                                     "long strings are cut")
                entry = json.loads(text)
            except (ValueError, RecursionError) as e:
                yield _unreadable(index, flow_id, e, _ends(text, keep))
            else:
                found = _uncut(entry) if cuts and isinstance(entry, dict | list) else []
                exchange = _exchange_or_note(entry, index, flow_id)
                _note_cuts(exchange, found, keep)
                yield exchange
            index += 1


_BROKEN = object()  # read_har: the file is not JSON as a whole
# A HAR file larger than this is read entry by entry, with its giant strings cut and each
# entry bounded; a smaller one is parsed at once, within a few hundred MB of objects
BIG_HAR = 16 * 2**20
_CHUNK = 8 * 2**20
_STRUCTURE = re.compile(rb'[^"]*+')  # outside strings: up to the next quote
# inside a string: up to its closing quote (unrolled: plain runs, each escape then a plain run)
_STRING_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
_PUNCTUATION = re.compile(rb"[{}\[\],:]")
# text without brackets outside strings, and whole strings: what an entry holds between
# its brackets, passed over in C
_FLAT = re.compile(rb'(?:[^"{}\[\]\\]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
# How a cut string ends once parsed, then its length in the file: with a number drawn in each
# process, so that no string in a capture can pass for one that was cut
CUT_MARK = f"\x00leakmap-cut-{secrets.token_hex(8)}:"
_NAME_BYTES = 256  # a longer string is no name that matters here ("log", "entries")


class _Piece(NamedTuple):
    """Text between strings (``string`` False), or one whole string with its quotes; ``cut``:
    the string was cut (:data:`CUT_MARK`)."""

    text: bytes | bytearray
    string: bool = False
    cut: bool = False
    flat: bool = False  # strings and text between them, no bracket outside a string


def json_pieces(handle: BinaryIO, keep: int, chunk_size: int = _CHUNK,
                flat: Callable[[], int] | None = None,
                keep_for: Callable[[], int] | None = None) -> Iterator[_Piece]:
    """The JSON text read from ``handle`` as pieces, each string whole; a string that decodes
    to more than ``keep`` bytes is cut after at least ``keep`` (whole characters and
    escapes), then :data:`CUT_MARK` and its length in the file.  Memory: one string within
    ``keep``, and a chunk.  A string the file ends in comes last, without its closing quote.
    ``flat()``: how many bytes of strings and the text between them (at most ``keep``) may
    come next as one piece, up to a bracket outside a string.  ``keep_for()``: the cut of
    the string that starts (at most ``keep``; default ``keep``)."""
    buffer, position, eof = b"", 0, False
    string: bytearray | None = None  # in a string: its text so far, from its opening quote
    length = 0  # bytes of the string so far, in the file
    decoded = 0  # at most the bytes they decode to (_at_most)
    limit = keep  # the cut of the string being read
    while True:
        room = flat() if string is None and flat is not None else 0
        if room:
            run = _FLAT.match(buffer, position, position + min(keep, room)).end()  # type: ignore[union-attr]
            if run > position:
                yield _Piece(buffer[position:run], flat=True)
                position = run
        if string is None:
            end = _STRUCTURE.match(buffer, position).end()  # type: ignore[union-attr]
            if end > position:
                yield _Piece(buffer[position:end])
        else:
            end = _STRING_BODY.match(buffer, position).end()  # type: ignore[union-attr]
            if decoded <= limit:
                string += buffer[position:end]
                decoded += _at_most(buffer, position, end)
                # no character takes more than 6 bytes written: _at_most counts "\\\\u" as less
                if length + end - position > 6 * limit + 6:
                    decoded = max(decoded, limit + 1)
                if decoded > limit:
                    del string[_cut_at(string, 1, limit):]
            length += end - position
        position = end
        if position < len(buffer) and not buffer.startswith(b"\\", position):
            position += 1  # a quote: a string starts or ends
            if string is None:
                limit = keep if keep_for is None else keep_for()
                end = _STRING_BODY.match(buffer, position).end()  # type: ignore[union-attr]
                if end - position <= limit and buffer[end : end + 1] == b'"':  # whole, short
                    yield _Piece(buffer[position - 1 : end + 1], True)
                    position = end + 1
                    continue
                string, length, decoded = bytearray(b'"'), 0, 0
                continue
            cut = decoded > limit
            string += (b"\\u0000" + CUT_MARK[1:].encode() + b"%d" % length) if cut else b""
            string.append(0x22)
            yield _Piece(string, True, cut)
            string = None
            continue
        if eof:
            if string is not None:
                yield _Piece(string, True)
            return
        chunk = handle.read(chunk_size)
        eof = not chunk
        buffer, position = buffer[position:] + chunk, 0  # a lone backslash waits for its escape


class HarEntry(NamedTuple):
    """The JSON text of an entry, how many of its strings were cut, and whether it is
    ``oversized``: not to be parsed, and its text kept only up to a bound."""

    text: bytearray
    cuts: int
    oversized: bool = False


def har_entries(handle: BinaryIO, keep: int, chunk_size: int = _CHUNK) -> Iterator[HarEntry]:
    """The JSON text of each element of ``log.entries`` in the HAR read from ``handle``, with
    strings cut as :func:`json_pieces` cuts them, and how many were cut in it; in order, one
    at a time.  Every array named ``entries`` in the root's ``log`` object is read (of
    repeated names, ``json.loads`` keeps the last).  Raises ValueError where brackets do
    not match, where the text ends inside a value, or at its end if there was no
    ``log.entries``.

    An entry is bounded too, whatever its strings each hold: once its text reaches ``keep``
    and :data:`ENTRY_SLACK` more, each string after is cut to :data:`_NAME_BYTES`
    (45 WebSocket messages of 15 MB each); past another :data:`ENTRY_SLACK`, or past
    :data:`MAX_CONTAINERS` objects and arrays (36 million ``{}`` were 2.8 GB parsed) or
    :data:`MAX_STRINGS` strings (headers as an object of 2.4 million pairs: 1 GB), it is
    ``oversized``: its text is kept only to that bound, the rest passed over in C."""
    reader = _EntryReader(keep)
    for piece in json_pieces(handle, keep, chunk_size, reader.flat, reader.keep_for):
        if piece.flat:
            reader.flat_piece(piece.text)
        elif piece.string:
            reader.string(piece)
        else:
            yield from reader.structure(piece.text)
    if reader.open or reader.entry is not None:
        raise ValueError("the text ends inside a value")
    if not reader.found:
        raise ValueError("no log.entries list")


_OPEN_OBJECT, _OPEN_ARRAY, _COMMA, _CLOSE_OBJECT, _CLOSE_ARRAY, _COLON = b"{[,}]:"
# An entry's text, its long strings cut, is parsed within these bounds (har_entries): parsed,
# a byte of JSON can take some 24 bytes of objects ("{}," is a dict and a list slot)
ENTRY_SLACK = 4 * 2**20
MAX_CONTAINERS = 1_000_000
MAX_STRINGS = 2_000_000  # about 110 MB of short strings, and the dicts they fill


class _EntryReader:
    """Where :func:`har_entries` is in the HAR's structure, and the entry being read."""

    def __init__(self, keep: int) -> None:
        self.open: list[tuple[int, str | None]] = []  # open containers: "{" or "[", its name
        self.name: str | None = None  # after a colon: the name of the value that follows
        self.last: str | None = None  # the last string outside entries, if short
        self.entry: bytearray | None = None  # in log.entries: the text since "[" or ","
        self.nested = 0  # containers open inside the entry (only counted: json.loads checks)
        self.containers = 0  # objects and arrays opened in it
        self.strings = 0  # strings in it (about: a quote escaped in one counts too)
        self.cuts = 0  # strings cut in it
        self.oversized = False  # past a bound: not to be parsed (its text kept up to most)
        self.found = False
        self.keep = keep
        self.full = keep + ENTRY_SLACK  # from here, each string of the entry is cut short
        self.most = self.full + ENTRY_SLACK  # from here, the entry is oversized

    def flat(self) -> int:
        """How many bytes of the text that follows may come as one piece: inside a
        container of an entry, where only brackets outside strings matter, within the
        entry's room before :attr:`most` (a string too long for it is cut on its own,
        :meth:`keep_for`); up to ``keep`` once the entry is oversized (passed over)."""
        if self.entry is None or not self.nested:
            return 0
        if self.oversized:
            return self.keep
        return max(0, self.most - len(self.entry))

    def keep_for(self) -> int:
        """The cut of the string that starts: ``keep``, less as the entry fills up."""
        if self.entry is None:
            return self.keep
        return min(self.keep, max(_NAME_BYTES, self.full - len(self.entry)))

    def add(self, text: bytes | bytearray) -> None:
        """Text of the entry, kept up to :attr:`most` bytes (whose first and last bytes an
        oversized entry has searched as text); past a bound, the entry is oversized."""
        if self.entry is None:
            return
        if len(self.entry) <= self.most:  # its text is kept up to there, oversized or not
            self.entry += text
        if (len(self.entry) > self.most or self.containers > MAX_CONTAINERS
                or self.strings > MAX_STRINGS):
            self.oversized = True

    def flat_piece(self, text: bytes | bytearray) -> None:
        """Strings and the text between them, inside the entry (:meth:`flat`)."""
        self.strings += text.count(b'"') // 2
        self.add(text)

    def string(self, piece: _Piece) -> None:
        if self.entry is None:
            self.last = _name(piece.text)
        else:
            self.strings += 1
            self.add(piece.text)
            self.cuts += piece.cut

    def structure(self, text: bytes | bytearray) -> Iterator[HarEntry]:
        """Each entry that ends in ``text`` (a piece between strings)."""
        if self.entry is not None:
            closing = text.count(b"}") + text.count(b"]")
            if self.nested > closing or self.nested > _deepest_close(text):
                # the entry goes on past this piece: counted in C
                opening = text.count(b"{") + text.count(b"[")
                self.nested += opening - closing
                self.containers += opening
                self.add(text)
                return
        at = 0
        for mark in _PUNCTUATION.finditer(text):
            sign = text[mark.start()]
            if self.entry is None:
                self._outside(sign)
                if _is_entries(self.open):
                    self.found, at = True, mark.end()
                    self._next_entry()
            elif sign in (_OPEN_OBJECT, _OPEN_ARRAY):
                self.nested += 1
                self.containers += 1
            elif sign in (_CLOSE_OBJECT, _CLOSE_ARRAY) and self.nested:
                self.nested -= 1
            elif not self.nested and sign in (_COMMA, _CLOSE_ARRAY):
                self.add(text[at : mark.start()])
                at = mark.end()
                if self.entry is not None and self.entry.strip():
                    yield HarEntry(self.entry, self.cuts, self.oversized)
                self._next_entry()
                if sign == _CLOSE_ARRAY:
                    self.entry = None
                    self.open.pop()
        if self.entry is not None:
            self.add(text[at:])

    def _next_entry(self) -> None:
        self.entry, self.cuts, self.containers, self.oversized = bytearray(), 0, 0, False
        self.strings = 0

    def _outside(self, sign: int) -> None:
        """Follow the structure outside log.entries, with each container's name."""
        if sign in (_OPEN_OBJECT, _OPEN_ARRAY):
            in_object = bool(self.open) and self.open[-1][0] == _OPEN_OBJECT
            self.open.append((sign, self.name if in_object else None))
        elif sign in (_CLOSE_OBJECT, _CLOSE_ARRAY) and (
                not self.open or self.open.pop()[0] != sign - 2):  # "{" + 2 is "}"
            raise ValueError(f"an unmatched {chr(sign)!r}")
        self.name = self.last if sign == _COLON else None


_AS_BRACES = bytes.maketrans(b"[]", b"{}")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"{}[]")))
_PAIRS_REMOVED = 64  # rounds of removing the innermost pairs before summing the steps
_STEPS = bytes.maketrans(b"{}", b"\x01\xff")


def _deepest_close(text: bytes | bytearray) -> int:
    """How many more containers ``text`` (outside strings) closes than it opens, at its
    deepest: with its matched pairs taken out, its brackets are closing ones, then opening
    ones.  In C, for a piece such as 36 million ``{}`` that stays inside an entry; where
    pairs are nested too deeply to take out in :data:`_PAIRS_REMOVED` rounds, the lowest
    of the running depth (each bracket's step summed in C, one step at a time)."""
    marks = text.translate(_AS_BRACES, _NOT_BRACKETS)
    for _ in range(_PAIRS_REMOVED):
        fewer = marks.replace(b"{}", b"")
        if len(fewer) == len(marks):
            return len(marks) - len(marks.lstrip(b"}"))
        shrunk, marks = len(fewer) * 4 < len(marks) * 3, fewer
        if not shrunk:  # less than a quarter taken out: nested deeply, sum the rest
            break
    steps = array.array("b", marks.translate(_STEPS))  # "{" +1, "}" -1
    return -min(0, min(itertools.accumulate(steps), default=0))


def _name(text: bytes | bytearray) -> str | None:
    if len(text) > _NAME_BYTES:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _is_entries(open_: list[tuple[int, str | None]]) -> bool:
    """Whether the container just opened is the root's ``log.entries`` list."""
    return (len(open_) == 3 and open_[0][0] == 0x7B and open_[1] == (0x7B, "log")
            and open_[2] == (0x5B, "entries"))


def _at_most(text: bytes | bytearray, start: int, end: int) -> int:
    """At most the bytes that the JSON string text ``text[start:end]`` (whole escapes)
    decodes to: each escape takes one byte fewer (``\\n``), a ``\\u`` five fewer (counted
    in C: this runs for every string of a large HAR)."""
    backslashes = text.count(b"\\", start, end)
    if not backslashes:
        return end - start
    escapes = backslashes - text.count(b"\\\\", start, end)  # "\\\\" is one escape
    return end - start - escapes - 4 * text.count(b"\\u", start, end)


def _cut_at(out: bytearray, start: int, keep: int) -> int:
    """Where to cut the string whose text begins at ``out[start]`` so that it still decodes to
    at least ``keep`` bytes where it can: not inside an escape, a character or an escaped
    surrogate pair (at the end of what was read, before the one it splits)."""
    low, high = start + keep, len(out)  # the shortest cut whose text decodes to keep or more
    # what the first keep bytes decode to, counted once; less 5 for an escape the split cuts
    head = _at_most(out, start, low) - 5
    while low < high:
        middle = (low + high) // 2
        if head + _at_most(out, start + keep, _past_escape(out, start, middle)) >= keep:
            high = middle
        else:
            low = middle + 1
    cut = _past_escape(out, start, low)
    while cut < len(out) and out[cut] & 0xC0 == 0x80:  # a UTF-8 character's continuation byte
        cut += 1
    if _HIGH_SURROGATE.match(out, max(start, cut - 6), cut):  # the first half of a pair
        cut = _past_escape(out, start, min(cut + 1, len(out)))
    return _whole(out, start, min(cut, len(out)))


def _whole(out: bytearray, start: int, cut: int) -> int:
    """``cut``, or before the escape or character that the end of ``out`` splits."""
    split = _split_escape(out, start, cut)
    if split is not None and split[1] > cut:
        cut = split[0]
    lead = cut
    while lead > start and lead > cut - 4 and out[lead - 1] & 0xC0 == 0x80:
        lead -= 1
    if lead > start and out[lead - 1] >= 0xC0:  # a lead byte: its character needs this many
        needed = 2 if out[lead - 1] < 0xE0 else 3 if out[lead - 1] < 0xF0 else 4
        if lead - 1 + needed > cut:
            cut = lead - 1
    if _HIGH_SURROGATE.match(out, max(start, cut - 6), cut):  # a pair's first half, alone
        cut -= 6
    return cut


def _past_escape(out: bytearray, start: int, cut: int) -> int:
    """``cut``, or the end of the escape it would split (``\\uXXXX``, ``\\n``)."""
    split = _split_escape(out, start, cut)
    return cut if split is None else max(cut, split[1])


def _split_escape(out: bytearray, start: int, cut: int) -> tuple[int, int] | None:
    """(begin, end) of the escape nearest before ``cut`` if it may reach it, else None."""
    cut = min(cut, len(out))
    for begin in range(cut - 1, max(start, cut - 6) - 1, -1):
        if out[begin] != 0x5C:
            continue
        if _backslashes_before(out, start, begin) % 2:  # escaped: its escape began one before
            begin -= 1
        return begin, begin + (6 if out[begin + 1 : begin + 2] == b"u" else 2)
    return None


def _backslashes_before(out: bytearray, start: int, end: int) -> int:
    """How many backslashes in a row end just before ``out[end]`` (counted in C, doubling)."""
    size = 1
    while size <= end - start and out.count(b"\\", end - size, end) == size:
        size *= 2
    low, high = size // 2, min(size, end - start + 1)  # all backslashes, not all (or the start)
    while high - low > 1:
        middle = (low + high) // 2
        if out.count(b"\\", end - middle, end) == middle:
            low = middle
        else:
            high = middle
    return low


_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9A-Fa-f]{2}\Z")


def _uncut(entry: Any) -> list[tuple[str, int, int]]:
    """Each cut string of ``entry`` (where, its length in the file, characters kept), with
    :data:`CUT_MARK` and the length taken off it."""
    found = []
    stack: list[tuple[Any, str]] = [(entry, "")]
    while stack:
        node, where = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            at = f"{where}.{key}" if where else str(key)
            if isinstance(value, dict | list):
                stack.append((value, at))
            elif isinstance(value, str) and CUT_MARK in value[-60:]:
                text, _, length = value.rpartition(CUT_MARK)
                if length.isdigit():
                    text = text[: len(text) - len(text) % 4]  # base64 (a body, a message) decodes
                    node[key] = text
                    found.append((at, int(length), len(text)))
    return found


def _note_cuts(exchange: Exchange, found: list[tuple[str, int, int]], keep: int | None) -> None:
    """What :func:`json_pieces` left out of ``exchange``'s entry: its body within the cap,
    and one note per string (of the first :data:`_NOTED_CUTS`; then how many more)."""
    others = 0
    for where, length, kept in found:
        if where == "request.postData.text" and keep is not None:
            body = exchange.request_body
            exchange.sent_size = max(length, exchange.request_size)
            exchange.request_body = body[:keep]
            exchange.reader_notes.append(
                f"body of about {length} bytes (its text in the HAR): only the first "
                f"{len(exchange.request_body)} scanned")
            continue
        others += 1
        if others <= _NOTED_CUTS:
            exchange.reader_notes.append(f"{where} of {length} bytes in the HAR: only the "
                                         f"first {kept} characters read from it")
    if others > _NOTED_CUTS:
        exchange.reader_notes.append(f"{others - _NOTED_CUTS} more strings of the entry cut")


_NOTED_CUTS = 20


def _ends(text: bytearray, keep: int) -> bytes:
    """At most ``keep`` bytes of an entry's text to search: its first and its last."""
    if len(text) <= keep:
        return bytes(text)
    return bytes(text[: keep // 2]) + b"\n" + bytes(text[len(text) - (keep - keep // 2 - 1):])


def _flow_id(digest: str, index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"har:{digest}:{index}"))


def _exchange_or_note(entry: Any, index: int, flow_id: str) -> Exchange:
    try:
        if not isinstance(entry, dict):  # a string, a number, a list: its text searched
            text = _text(entry)
            return _unreadable(index, flow_id, TypeError("not an object"),
                               (text or "").encode("utf-8", "surrogatepass"))
        return exchange_from_entry(entry, flow_id)
    except (TypeError, AttributeError, ValueError, RecursionError) as e:
        return _unreadable(index, flow_id, e)


def _unreadable(index: int, flow_id: str, error: BaseException, text: bytes = b"") -> Exchange:
    """Still a flow in the capture: logged, with what was wrong.

    ``text``: the entry's own text where it is no JSON that can be read (a broken literal,
    nesting too deep, a number of 5,000 digits), searched as a plain-text body: what it
    holds is still found."""
    exchange = Exchange(flow_id=flow_id, kind="http", timestamp=0.0,
                        error=f"HAR entry {index} unreadable: {_short(error)}")
    if text:
        exchange.request_headers = [("Content-Type", "text/plain")]
        exchange.request_body = text
        exchange.reader_notes.append(f"HAR entry {index} searched as text")
    return exchange


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
