"""Payload decoding: turn a request into named text leaves.

Every value a request carries (query parameters, headers, cookies, body
fields, WebSocket messages) becomes a :class:`Leaf` with the path where it sat
(``request.body.json.contacts[1].tel``) and the encodings that had to be
undone to reach it (``layers``, outermost first).  Nested containers are
followed: JSON inside a JSON string, base64 or hex blobs that decode to text,
percent-encoded values, form strings inside fields.

Captured payloads are hostile.  Nothing here raises on bad input: every
problem is written to :attr:`Collector.errors` and decoding moves on, within
the byte, depth and leaf budgets of :class:`Limits`, and within a deadline:
past it, :attr:`Collector.full` is true, so no more values are decoded, and
decompression stops at the next megabyte.
"""

from __future__ import annotations

import binascii
import html
import itertools
import json
import operator
import re
import string
import threading
import time
import unicodedata
import zlib
from bisect import bisect_right
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.feedparser import BytesFeedParser
from email.policy import HTTP
from email.utils import collapse_rfc2231_value
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import unquote, unquote_plus, unquote_to_bytes
from xml.etree.ElementTree import TreeBuilder

import brotli
import defusedxml.ElementTree as SafeET
import simdjson
import zstandard

from leakmap.core import protobuf
from leakmap.core.exchange import Exchange, Message, scanned_note, split_url


@dataclass(frozen=True)
class Limits:
    """Budgets that keep one flow's analysis bounded."""

    max_body_bytes: int = 16 * 1024 * 1024
    max_decoded_bytes: int = 32 * 1024 * 1024
    # Documents (JSON, a form string) inside strings, one inside another: each is a level of
    # recursion, and its own tree up to max_structure_depth deep
    max_depth: int = 6
    # Encodings (base64, hex, percent-encoding, compression...) undone one inside another:
    # 40 layers of base64 around an IMEI (1.5 MB) are undone in a few milliseconds.
    max_encodings: int = 64
    # Characters decoded from values, all layers of all values of one flow together: a chain
    # that hardly shortens its value (%25 -> %, &amp; -> &) would otherwise cost its length
    # at every one of its layers
    max_unwrapped_chars: int = 128 * 1024 * 1024
    max_structure_depth: int = 64
    max_leaves: int = 50_000
    min_blob_length: int = 12
    # Longer values reach the classifier as overlapping windows, so that no
    # detector sees more than about this many characters at once (a regex
    # that is quadratic in the length of a run would otherwise hang on one
    # 2 MB hex string).  Values up to ``leaf_overlap`` long are always whole
    # in some window.
    max_leaf_chars: int = 1024
    leaf_overlap: int = 256
    max_errors: int = 100
    # A parsed document costs 60-250 bytes a node: a 32 kB gzip of "{}," is
    # 32 MB of JSON and 11 million dicts.  A JSON or XML body with more nodes
    # than this is scanned as text; a protobuf body is read this far (in
    # fields), a multipart body with more parts is scanned as text.
    max_parsed_values: int = 250_000
    max_parts: int = 10_000
    # Wall-clock milliseconds one flow's decoding and classification may take
    # (leakmap_analysis_budget_ms); a flow that runs out keeps what was found.
    # 0 or less: no time limit.  The classifier sets the deadline.
    budget_ms: int = 50


def budget_note(limits: Limits) -> str:
    """The problem recorded on a flow whose analysis ran out of time."""
    return f"analysis budget of {limits.budget_ms} ms exhausted; findings so far kept"


class Leaf(NamedTuple):
    """One value and where it sat.  A tuple: a flow has thousands, made at C speed."""

    path: str
    value: str
    layers: tuple[str, ...] = ()
    key: str | None = None
    parent: str | None = None


@dataclass
class Collector:
    """Accumulates leaves and analysis problems for one flow.

    ``deadline`` (a ``time.monotonic()`` value) ends decoding when it
    passes.  ``on_batch`` is handed the new leaves each time about
    ``batch_chars`` characters of values have come in, so that the classifier
    can look for known values while decoding goes on; whoever reads the
    collector last hands over the rest (:meth:`hand_over`).
    """

    limits: Limits = field(default_factory=Limits)
    leaves: list[Leaf] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    truncated: bool = False
    deadline: float | None = None
    on_batch: Callable[[list[Leaf]], None] | None = None
    batch_chars: int = 64 * 1024
    # Asked before a JSON document is walked: the offsets (characters) where a
    # detector might find something (the classifier's gates).  Only the parts that
    # hold one are walked; [] means none, None that it cannot tell: walk it all.
    json_hot: Callable[[bytes], list[int] | None] | None = None
    # The same for a form body (application/x-www-form-urlencoded): the indices of
    # the pairs worth decoding.
    form_hot: Callable[[bytes], dict[int, tuple[str, str]] | None] | None = None
    # (path, value) of the URL path and headers known to hold nothing (the classifier's
    # memory of earlier flows): they are not read again.
    known_quiet: Container[tuple[str, str]] = ()
    # The URL path and headers read this time that became one leaf as they were
    # (nothing decoded from them, not cut): what the classifier may remember.
    single_leaves: list[Leaf] = field(default_factory=list)
    remembered: int = 0  # places skipped as known_quiet: each still counts as its one leaf
    out_of_time: bool = False
    inflated: int = 0  # bytes inflated from compressed values (not the body): max_decoded_bytes
    unwrapped: int = 0  # characters decoded from values, every layer: max_unwrapped_chars
    binary_nesting: int = 0  # compressed binary values being read, one inside another
    leaves_spent: bool = False  # the leaf budget ran out: values were left unread
    _asked: int = 0
    _handed: int = 0  # leaves before this index went to on_batch
    _unhanded_chars: int = 0

    def add(self, leaf: Leaf) -> bool:
        """Keep ``leaf`` (a long one as windows); False once the leaf budget is spent."""
        size = self.limits.max_leaf_chars
        if len(leaf.value) <= size:
            return self._append(leaf)
        for window in _windows(leaf.value, size, self.limits.leaf_overlap):
            if not self._append(leaf._replace(value=window)):
                return False
        return True

    def _append(self, leaf: Leaf) -> bool:
        if self.full:
            return False
        self.leaves.append(leaf)
        self._unhanded_chars += len(leaf.value) + 1
        if self._unhanded_chars >= self.batch_chars:
            self.hand_over()
        return True

    def hand_over(self) -> None:
        """Give ``on_batch`` the leaves it has not seen yet."""
        if self.on_batch is not None and self._handed < len(self.leaves):
            fresh = self.leaves[self._handed :]
            self._handed, self._unhanded_chars = len(self.leaves), 0
            self.on_batch(fresh)

    def note(self, problem: str) -> None:
        if len(self.errors) < self.limits.max_errors:
            self.errors.append(problem)
        elif len(self.errors) == self.limits.max_errors:
            self.errors.append("more problems not listed")

    def note_once(self, problem: str) -> None:
        if problem not in self.errors:
            self.note(problem)

    def expired(self, exact: bool = False) -> bool:
        """True once the deadline has passed (noted on the flow, once).

        The clock is read on every 16th question (about every 20 us of
        decoding), or on each one that is ``exact``.
        """
        if self.out_of_time:
            return True
        if self.deadline is None:
            return False
        self._asked += 1
        if (self._asked & 15 and not exact) or time.monotonic() <= self.deadline:
            return False
        self.out_of_time = self.truncated = True
        self.errors.append(budget_note(self.limits))  # past max_errors too: it explains the rest
        return True

    @property
    def full(self) -> bool:
        """True once the leaf or time budget is spent: whoever asks skips a value, so it is noted."""
        if (self.deadline is not None or self.out_of_time) and self.expired():
            return True
        if len(self.leaves) + self.remembered < self.limits.max_leaves:
            return False
        self.truncated = self.leaves_spent = True
        self.note_once(f"leaf budget of {self.limits.max_leaves} values exhausted")
        return True


_BREAK = re.compile(r"[^0-9A-Za-z]")
_SNAP = 64


def _windows(text: str, size: int, overlap: int) -> Iterator[str]:
    """``text`` in windows of about ``size`` characters, overlapping by ``overlap``.

    Each window is widened (by up to ``_SNAP`` characters each side) to the
    nearest non-alphanumeric character, so that a window does not start or
    end inside a number or token when it can help it: a cut 20-digit id
    must not leave a 15-digit IMEI-shaped tail.
    """
    step = size - min(max(0, overlap), size // 2)  # an overlap near size would be n windows
    start = 0
    while True:
        end = start + size
        low = start
        if start > 0:
            before = _BREAK.search(text[max(0, start - _SNAP) : start][::-1])
            low = start - before.start() if before else start
        high = end
        if end < len(text):
            after = _BREAK.search(text, end, end + _SNAP)
            high = after.start() if after else end
        yield text[low:high]
        if end >= len(text):
            return
        start += step


# --------------------------------------------------------------------------
# Content-Encoding, streamed with an output cap.

_CHUNK = 64 * 1024
_STEP = 1024 * 1024  # decompressed between two looks at the clock


class DecompressionLimit(Exception):
    """The decoded body would exceed the cap."""


class DamagedStream(ValueError):
    """A compressed stream that broke off (a bad checksum, junk): ``produced`` holds what it
    inflated to before (within the cap), which readers keep and the budgets count."""

    def __init__(self, message: str, produced: bytes = b"") -> None:
        super().__init__(message)
        self.produced = produced


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _capped(out: bytearray, cap: int, deadline: float | None) -> bytes:
    if _late(deadline):
        return b""  # not to be scanned: no copy
    del out[cap:]  # in place: no second copy of a body at the cap
    return bytes(out)


def _stream_zlib(data: bytes, wbits: int, cap: int,
                 deadline: float | None = None) -> tuple[bytes, bool]:
    """Inflate ``data``; for gzip every member, as gzip readers do (data may hide in the second).

    The input is fed a chunk at a time from a view of ``data`` (a member's end gives back
    the rest of its chunk only): taking what follows each member as a copy of the rest of
    the body made a body of a million empty members quadratic (8 minutes for 16 MiB).
    At most ``_MAX_MEMBERS`` members are read; past them the body counts as cut.
    """
    out = bytearray()
    view, offset, members = memoryview(data), 0, 0
    while True:
        decoder = zlib.decompressobj(wbits)
        pending: bytes | memoryview = b""
        try:
            while len(out) <= cap and not _late(deadline):
                if not pending:
                    if offset >= len(data):
                        break  # the input ended before the stream did
                    pending = view[offset : offset + _CHUNK]
                    offset += len(pending)
                piece = decoder.decompress(pending, min(_STEP, cap - len(out) + 1))
                out += piece
                left = decoder.unconsumed_tail
                if decoder.eof:
                    offset -= len(decoder.unused_data)  # what follows the member: given back
                    break
                if not piece and len(left) == len(pending):
                    break  # no progress: nothing more will come
                pending = left
        except zlib.error as e:
            if not members:
                produced = _capped(out, cap, deadline) or _unchecked(data, wbits, cap)
                raise DamagedStream(str(e), produced) from e
            break  # junk after a complete member: keep what it gave
        members += 1
        gzip_member_follows = wbits > zlib.MAX_WBITS and data.startswith(b"\x1f\x8b", offset)
        if (not decoder.eof or not gzip_member_follows or len(out) > cap
                or members >= _MAX_MEMBERS):
            break
    cut = len(out) > cap or (offset < len(data) and not decoder.eof) or (
        members >= _MAX_MEMBERS and gzip_member_follows)
    return _capped(out, cap, deadline), cut


_MAX_MEMBERS = 10_000


def _unchecked(data: bytes, wbits: int, cap: int) -> bytes:
    """The deflate data of a gzip or zlib stream whose check failed (a wrong CRC or Adler-32
    in its trailer: the data may be whole), inflated without the check; b"" if even that
    fails.  zlib gives no output from a call that ends in a failed check."""
    start = _gzip_data_start(data) if wbits > zlib.MAX_WBITS else 2 if wbits > 0 else None
    if start is None:
        return b""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:], cap)
    except zlib.error:
        return b""


def _gzip_data_start(data: bytes) -> int | None:
    """Where a gzip member's deflate data begins, past its header (RFC 1952), or None."""
    if len(data) < 10 or not data.startswith(b"\x1f\x8b\x08"):
        return None
    flags, position = data[3], 10
    if flags & 4:  # FEXTRA: a length, then that many bytes
        position += 2 + int.from_bytes(data[position : position + 2], "little")
    for flag in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            position = data.find(b"\0", position) + 1
            if not position:
                return None
    if flags & 2:  # FHCRC
        position += 2
    return position if position <= len(data) else None


def _stream_brotli(data: bytes, cap: int, deadline: float | None = None) -> tuple[bytes, bool]:
    decoder = brotli.Decompressor()
    out = bytearray()
    try:
        out += decoder.process(data, output_buffer_limit=_CHUNK)
        steps = 0
        while len(out) <= cap and not decoder.is_finished() and not decoder.can_accept_more_data():
            steps += 1
            if steps % (_STEP // _CHUNK) == 0 and _late(deadline):
                break
            out += decoder.process(b"", output_buffer_limit=_CHUNK)
    except brotli.error as e:
        raise DamagedStream(str(e), _capped(out, cap, deadline)) from e
    cut = len(out) > cap
    return _capped(out, cap, deadline), cut


def _stream_zstd(data: bytes, cap: int, deadline: float | None = None) -> tuple[bytes, bool]:
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    out = bytearray()
    try:
        with reader:
            while len(out) <= cap and not _late(deadline):
                piece = reader.read(min(_STEP, cap + 1 - len(out)))
                if not piece:
                    break
                out += piece
    except zstandard.ZstdError as e:
        raise DamagedStream(str(e), _capped(out, cap, deadline)) from e
    cut = len(out) > cap
    return _capped(out, cap, deadline), cut


def decompress(data: bytes, encoding: str, cap: int,
               deadline: float | None = None) -> tuple[bytes, bool]:
    """Undo one Content-Encoding.  Returns (bytes, hit_cap); raises ValueError
    (:class:`DamagedStream`, with what it inflated, when the stream broke off).

    Past ``deadline`` (``time.monotonic()``) it stops at the next megabyte
    and returns no bytes: the caller looks at the clock.
    """
    name = encoding.strip().lower()
    try:
        if name in ("gzip", "x-gzip"):
            return _stream_zlib(data, 16 + zlib.MAX_WBITS, cap, deadline)
        if name == "deflate":
            try:
                return _stream_zlib(data, zlib.MAX_WBITS, cap, deadline)
            except DamagedStream as e:
                if e.produced:
                    raise
                return _stream_zlib(data, -zlib.MAX_WBITS, cap, deadline)  # raw, no header
        if name == "br":
            return _stream_brotli(data, cap, deadline)
        if name == "zstd":
            return _stream_zstd(data, cap, deadline)
    except DamagedStream as e:
        raise DamagedStream(f"{name} body does not decode: {e}", e.produced) from e
    except (zlib.error, brotli.error, zstandard.ZstdError) as e:
        raise ValueError(f"{name} body does not decode: {e}") from e
    if name in ("identity", ""):
        return data[:cap], len(data) > cap
    raise ValueError(f"unknown content-encoding {name!r}")


def undo_content_encoding(
    body: bytes, content_encoding: str | None, collector: Collector
) -> bytes | None:
    """The body with every Content-Encoding undone, or None if it cannot be.  One said by
    no header is undone by :func:`decode_payload` (:func:`_unpacked`)."""
    if not content_encoding:
        return body
    said_order = [e for e in content_encoding.split(",") if e.strip()]
    if len(said_order) > 1 and not _undoes(body, said_order[-1]) and _undoes(body, said_order[0]):
        # "br, gzip" on brotli(gzip(...)): the encodings listed the wrong way round
        collector.note(f"Content-Encoding {content_encoding.strip()[:60]} listed the wrong way "
                       "round: undone in the order written")
        said_order.reverse()
    cap = collector.limits.max_decoded_bytes
    for said in reversed(said_order):
        # a stream whose first bytes say it is another compression is read as that one (gzip
        # said to be br: brotli has no magic, and reads one gzip body in ten without error)
        encoding = said
        actual = _compression(body[:4])
        if actual is not None and actual != _canonical(said) and _canonical(said) != "identity":
            encoding = actual
        try:
            try:
                body, hit_cap = decompress(body, encoding, cap, collector.deadline)
            except ValueError as e:
                if encoding == said or (isinstance(e, DamagedStream) and e.produced):
                    raise
                encoding = said  # only looked like one (a br stream can start as zlib does)
                body, hit_cap = decompress(body, said, cap, collector.deadline)
            if encoding != said:
                collector.note(f"body said to be {said.strip()[:40]} starts as {encoding}: "
                               f"read as {encoding}")
        except DamagedStream as e:
            if not e.produced:
                collector.note(f"decoder error: {e}")
                return None
            collector.note(f"decoder error: {e}; the {len(e.produced)} bytes before the damage read")
            body, hit_cap = e.produced, False
        except ValueError as e:
            collector.note(f"decoder error: {e}")
            return None
        if collector.expired(exact=True):  # what was inflated in time is not scanned either
            return None
        if hit_cap:
            collector.truncated = True
            collector.note(f"decompression limit hit: {encoding.strip()} body cut at {cap} bytes")
    return body


def _undoes(body: bytes, encoding: str) -> bool:
    """Whether ``body`` starts to decode as ``encoding`` (its first kilobytes inflate)."""
    try:
        decompress(body[:_PROBE_BYTES], encoding, _PROBE_BYTES, None)
    except DamagedStream as e:  # the probe's cut end breaks the stream: what came before counts
        return bool(e.produced)
    except ValueError:
        return False
    return True


_PROBE_BYTES = 4096


# A body compressed without a Content-Encoding to say so, by its first bytes: gzip (its
# magic and the deflate method) and zstd.  Brotli has no magic.
_MAGIC = ((b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"))


def _canonical(encoding: str) -> str:
    """A Content-Encoding as :func:`_compression` names it (``x-gzip`` is gzip)."""
    name = encoding.strip().lower()
    return "gzip" if name == "x-gzip" else name


def sniffed(body: bytes, collector: Collector) -> bytes:
    """``body`` inflated (within the caps, as a declared encoding would be) if it starts as a
    gzip, zstd or zlib stream does and inflates; else as it came."""
    encoding = _compression(body[:4])
    if encoding is None:
        return body
    cap = collector.limits.max_decoded_bytes
    try:
        inflated, hit_cap = decompress(body, encoding, cap, collector.deadline)
    except ValueError:
        return body  # binary that only starts like it (or a damaged stream: as it came)
    if collector.expired(exact=True) or not inflated:
        return body  # out of time: nothing more is read
    collector.note(f"{encoding} body without a Content-Encoding saying so: inflated")
    if hit_cap:
        collector.truncated = True
        collector.note(f"decompression limit hit: {encoding} body cut at {cap} bytes")
    return inflated


_SNIFF_ROUNDS = 4  # gzip in gzip in zstd...: streams inside one another, said or not


def _unpacked(body: bytes, collector: Collector) -> bytes:
    """``body`` with every compression it starts with undone (:func:`sniffed`), up to
    :data:`_SNIFF_ROUNDS` inside one another: gzip inside a body said to be gzip once,
    ``identity`` on a gzip body, a gzip file in a multipart part."""
    for _ in range(_SNIFF_ROUNDS):
        inflated = sniffed(body, collector)
        if inflated is body:
            return body
        body = inflated
    return body


_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _utf16_text(body: bytes, content_type: str) -> bytes | None:
    """A UTF-16 body (a byte-order mark, a ``charset=utf-16``, or every other byte of its
    start NUL) as UTF-8, if it decodes to text; else None.  A stray last byte (a body cut
    short, a line break added) and a broken surrogate do not undo the rest."""
    if len(body) < 4:
        return None
    body = body[: len(body) - len(body) % 2]
    head = body[:16]
    if head[:2] in _UTF16_BOMS:
        codec = "utf-16"  # the mark says which end comes first
    elif "utf-16" in content_type.lower():
        big_end = "utf-16be" in content_type.lower() or head[0] == 0
        codec = "utf-16-be" if big_end else "utf-16-le"
    elif not head[1::2].strip(b"\0") and head[::2].strip(b"\0"):
        codec = "utf-16-le"
    elif not head[::2].strip(b"\0") and head[1::2].strip(b"\0"):
        codec = "utf-16-be"
    else:
        return None
    text = body.decode(codec, "replace")
    return text.encode("utf-8") if _mostly_text(text) else None


# --------------------------------------------------------------------------
# Text values and the containers nested in them.

_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
# A character escaped as code writes it: JSON's \uXXXX, JavaScript's \xXX.  JSON that parses
# has its escapes undone by the parser; these are in text read as text (malformed JSON, a
# script), where a value may hide as \u0038\u0036...
_CODE_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})|\\x([0-9A-Fa-f]{2})")


def _unescaped(escape: re.Match[str]) -> str:
    return chr(int(escape.group(1) or escape.group(2), 16))


_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}|[A-Za-z0-9_-]+={0,2}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+|(?:[0-9A-F]{2})+")
_FORM = re.compile(r"[^=&\s]+=[^&\s]*(?:&[^=&\s]+=[^&\s]*)+")


def is_texty(raw: bytes) -> str | None:
    """``raw`` as text if it is mostly printable UTF-8, else None."""
    if len(raw) < 4:
        return None
    if raw.isascii():  # printable ASCII, tab, LF and CR deleted in C: what is left is not text
        unprintable = len(raw.translate(None, _ASCII_TEXT))
        return raw.decode("ascii") if unprintable <= 0.1 * len(raw) else None
    # "ignore" drops what is not UTF-8: shorter means it was not (no exception raised)
    text = raw.decode("utf-8", "ignore")
    if len(text.encode("utf-8")) != len(raw):
        return None
    return text if printable_count(text) >= 0.9 * len(text) else None


_ASCII_TEXT = bytes(range(0x20, 0x7F)) + b"\t\n\r"
_LINE_CONTROLS = str.maketrans("", "", "\r\n\t")
_PRINTABLE_SLICE = 4096


def printable_count(text: str) -> int:
    """How many characters of ``text`` are printable or CR, LF or tab.

    Slice by slice: a slice that is all printable (the usual case) is
    counted by ``str.isprintable`` at C speed, not character by character.
    """
    count = 0
    for start in range(0, len(text), _PRINTABLE_SLICE):
        part = text[start : start + _PRINTABLE_SLICE].translate(_LINE_CONTROLS)
        count += len(part) if part.isprintable() else sum(ch.isprintable() for ch in part)
    return count + len(text) - len(text.translate(_LINE_CONTROLS))


_SNIFF = 4096
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def _starts_texty(body: bytes) -> bool:
    """Whether the head of ``body`` is text (a character cut at the end is fine)."""
    head = body[:_SNIFF]
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if len(body) > _SNIFF and e.reason == "unexpected end of data":
            head = head[: e.start]  # the cut went through a multi-byte character
    return is_texty(head) is not None


def _mostly_text(text: str) -> bool:
    """Whether decoded ``text`` (replacement characters included) reads as text."""
    sample = text[: 16 * _SNIFF]
    return len(_UNPRINTABLE.findall(sample)) <= 0.3 * len(sample)


def base64_bytes(value: str) -> bytes | None:
    """The bytes of a base64 value: standard or URL-safe, padded or not."""
    stripped = value.rstrip("=")
    if len(stripped) % 4 == 1 or not stripped.isascii():
        return None
    raw = (stripped + "=" * (-len(stripped) % 4)).encode("ascii")
    if "-" in stripped or "_" in stripped:
        raw = raw.translate(_URL_SAFE_TO_STANDARD)
    try:  # what base64.b64decode(validate=True) calls, without its layers
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        return None


_URL_SAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_HEX_DIGITS = ("0123456789abcdef", "0123456789ABCDEF")
_BASE64_ALPHABETS = (string.ascii_letters + string.digits + "+/",
                     string.ascii_letters + string.digits + "-_")


def _is_hex(text: str) -> bool:
    """``_HEX.fullmatch(text)``, by ``str.strip`` (nothing left: every character was a digit)."""
    return len(text) % 2 == 0 and text != "" and _all_of(text, _HEX_DIGITS)


def _is_base64(text: str) -> bool:
    """``_BASE64.fullmatch(text)``: one alphabet, then at most two ``=``."""
    core = text.rstrip("=")
    return core != "" and len(text) - len(core) <= 2 and _all_of(core, _BASE64_ALPHABETS)


def _all_of(text: str, alphabets: tuple[str, str]) -> bool:
    """Whether every character of ``text`` (not empty) is in one of ``alphabets``.  Its ends
    are looked at first: ``str.strip`` of a 16 MB text that only ends in digits walks all of it.
    A long text is asked as bytes: ``str.strip`` looks each character up in the alphabet
    (about 15 ns a character), ``bytes.translate`` in a table."""
    first, last = text[0], text[-1]
    if len(text) > _LONG_ALPHABET_TEXT and text.isascii():
        raw = text.encode("ascii")
        return any(first in alphabet and last in alphabet
                   and not raw.translate(None, alphabet.encode("ascii"))
                   for alphabet in alphabets)
    return any(first in alphabet and last in alphabet and not text.strip(alphabet)
               for alphabet in alphabets)


_LONG_ALPHABET_TEXT = 4096


def decode_base64_text(value: str) -> str | None:
    """Text inside a base64 value."""
    raw = base64_bytes(value)
    return is_texty(raw) if raw is not None else None


def decode_hex_text(value: str) -> str | None:
    try:
        return is_texty(bytes.fromhex(value))
    except ValueError:
        return None


# What a value needs before it can hold anything to follow: percent-encoding, a form
# (``&``), a document (``{`` or ``[``); longer than min_blob_length, hex or base64.
_NOT_BLOB = re.compile(r"[^A-Za-z0-9+/=_\r\n-]")


def plain_value(text: str, limits: Limits) -> bool:
    """Whether ``text`` is a value with nothing inside to follow (most are): kept as it is."""
    if (len(text) > limits.max_leaf_chars or "%" in text or "&" in text or "{" in text
            or "[" in text):
        return False
    return len(text) < limits.min_blob_length or (
        _NOT_BLOB.search(text) is not None and "\\" not in text)  # \u0038: an escape to undo


def _looks_like_json(text: str) -> bool:
    stripped = text.strip()
    return len(stripped) >= 2 and (
        (stripped[0] == "{" and stripped[-1] == "}") or (stripped[0] == "[" and stripped[-1] == "]")
    )


def expand_text(
    collector: Collector,
    path: str,
    text: str,
    layers: tuple[str, ...] = (),
    key: str | None = None,
    parent: str | None = None,
    depth: int = 0,
) -> None:
    """Record ``text`` at ``path`` and follow whatever it contains.

    Structured text (JSON, a form string) is walked instead of being kept
    whole, so each value inside is found once, at its own path.  A long
    value that is wholly base64 or percent-encoding of text is kept only
    decoded: its encoded form shows nothing the decoded one does not
    (findings prefer the more decoded view anyway), and keeping every layer
    would make a value nested in encodings cost each layer's length again.
    Hex is kept in both forms: a string of digits is hex too.  A chain of
    encodings is undone in a loop, each decoded text taking the place of the
    one before (one copy alive at a time, no recursion), every layer charged
    to the flow's ``max_unwrapped_chars``.
    """
    limits = collector.limits
    while text and not collector.full:
        if plain_value(text, limits):
            collector.add(Leaf(path, text, layers, key, parent))
            _follow_inside(collector, path, text, layers, depth)
            return
        # a document needs "{" or "[", a form string "&": most values that get here (base64,
        # hex, percent-encoding) have none, and skip the two parsers' checks
        if depth < limits.max_depth and ("{" in text or "[" in text or "&" in text) and (
                _walk_structured(collector, path, text, layers, depth)):
            return
        # the clock, before a long value is decoded once more (not recorded: the value itself
        # is still kept below, as far as the leaf budget's own look at the clock lets it)
        nested = _unwrap_once(collector, text, layers) if len(layers) < limits.max_encodings and (
            len(text) <= _BIG_TEXT or not _late(collector.deadline)) else None
        decoded_only = (len(text) > limits.max_leaf_chars and nested is not None
                        and nested[1][-1] in _DECODED_ONLY)
        if not decoded_only and not collector.add(Leaf(path, text, layers, key, parent)):
            return
        if nested is None:
            _note_not_followed(collector, text, layers, depth)
            _follow_inside(collector, path, text, layers, depth)  # a long value holds them too
            return
        contents, layers = nested
        if isinstance(contents, bytes):  # inflated, or binary: read as a binary body is
            _binary_value(collector, path, contents)
            return
        text = contents


_BIG_TEXT = 1 << 20
_MAX_BINARY_NESTING = 4


def _follow_inside(collector: Collector, path: str, text: str, layers: tuple[str, ...],
                   depth: int) -> None:
    """What a value kept as it is may still hold: JSON Web Tokens or base64 of a JSON object
    (``Bearer eyJ...``), or base64 behind a short label (``Basic ...``)."""
    if depth >= collector.limits.max_depth:
        return
    if "eyJ" in text:  # base64 of '{"'
        _follow_tokens(collector, path, text, layers, depth)
    elif may_be_labelled(text):
        _follow_labelled(collector, path, text, layers, depth)


def _binary_value(collector: Collector, path: str, contents: bytes) -> None:
    """Binary inside a value (``base64(gzip(protobuf))``, base64 of a protobuf), read as a
    binary body, at most four inside one another: each starts counting its encodings again."""
    if collector.binary_nesting >= _MAX_BINARY_NESTING:
        collector.note_once(f"binary values nested deeper than {_MAX_BINARY_NESTING} not read")
        return
    collector.binary_nesting += 1
    try:
        decode_binary(collector, path, contents)
    finally:
        collector.binary_nesting -= 1


# An encoding whose value is kept only decoded when it is long: its encoded text shows nothing
_DECODED_ONLY = frozenset({"base64", "url", "html", "escape", "gzip", "zstd", "deflate"})


def _note_not_followed(collector: Collector, text: str, layers: tuple[str, ...],
                       depth: int) -> None:
    """Say so when a limit kept a document or an encoding in ``text`` from being followed."""
    limits = collector.limits
    if depth >= limits.max_depth and (_looks_like_json(text) or _FORM.fullmatch(text)):
        collector.note_once(f"nesting deeper than {limits.max_depth} not followed")
    elif len(layers) >= limits.max_encodings and _unwrap_once(collector, text, layers):
        collector.note_once(f"encodings nested deeper than {limits.max_encodings} not undone")


# A JSON Web Token (JWS compact form: header.payload.signature), as in "Bearer eyJ...": its
# dots keep it from being read as one base64 value
_TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?")
_TOKEN_PARTS = ("header", "payload")
# base64 of a JSON object ('{"') inside longer text, with no dots: "Bearer eyJpbWVp...",
# "payload follows: eyJ..."; at least 16 characters
_JSON_IN_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_.-])eyJ[A-Za-z0-9+/_-]{13,}={0,2}(?![A-Za-z0-9.])")
_MAX_TOKENS = 16


def _follow_tokens(collector: Collector, path: str, text: str, layers: tuple[str, ...],
                   depth: int) -> None:
    """The header and payload of each JSON Web Token in ``text``, and each base64 JSON
    object standing in it with no dots, decoded and followed (the first 16 of each)."""
    for index, token in enumerate(itertools.islice(_TOKEN.finditer(text), _MAX_TOKENS)):
        for part, segment in zip(_TOKEN_PARTS, token.group().split("."), strict=False):
            if collector.full:
                return
            decoded = decode_base64_text(segment)
            if decoded is not None:
                expand_text(collector, f"{path}.jwt[{index}].{part}", decoded,
                            (*layers, "base64"), depth=depth + 1)
    for index, blob in enumerate(itertools.islice(_JSON_IN_BASE64.finditer(text), _MAX_TOKENS)):
        decoded = decode_base64_text(blob.group())
        if collector.full:
            return
        if decoded is not None:
            expand_text(collector, f"{path}.base64[{index}]", decoded, (*layers, "base64"),
                        depth=depth + 1)


# base64 behind a short label: "Basic <user:password>", "v1:<payload>", a data URL
# ("data:text/plain;base64,<payload>"); the whole value is the label and the base64
_LABELLED_BASE64 = re.compile(r"\s*(?:[A-Za-z][\w.-]{0,23}(?::|\s+)|data:[\w.+/-]*(?:;[\w.=-]+)*"
                              r";base64,)([A-Za-z0-9+/_-]{12,}={0,2})\s*")


def may_be_labelled(text: str) -> bool:
    """Whether ``text`` may be base64 behind a label (:data:`_LABELLED_BASE64`): not a value
    to keep as it is without a look."""
    return (len(text) >= 14 and (text[0].isalpha() or text[0].isspace())
            and (" " in text or ":" in text or "," in text))


_SOME_TEXT = re.compile(rb"[\x20-\x7e]{6}")  # binary worth reading: a random token seldom has it


def _follow_labelled(collector: Collector, path: str, text: str, layers: tuple[str, ...],
                     depth: int) -> None:
    """The text inside base64 behind a short label (:data:`_LABELLED_BASE64`), followed at
    ``<path>.base64``; binary inside it is read as a binary body is."""
    labelled = _LABELLED_BASE64.fullmatch(text)
    if labelled is None:
        return
    raw = base64_bytes(labelled.group(1))
    if raw is None or len(raw) < 4:
        return
    decoded = is_texty(raw)
    if decoded is not None:
        expand_text(collector, f"{path}.base64", decoded, (*layers, "base64"), depth=depth + 1)
    elif _SOME_TEXT.search(raw):
        _binary_value(collector, f"{path}.base64", raw)


def _unwrap_once(collector: Collector, text: str, layers: tuple[str, ...]
                 ) -> tuple[str | bytes, tuple[str, ...]] | None:
    """(the text one encoding below ``text``, its layers), or None: none, or the flow's
    ``max_unwrapped_chars`` spent.  Bytes instead of text: a compressed stream whose
    contents are not text, or base64 or hex of binary that holds text."""
    limits = collector.limits
    if collector.unwrapped >= limits.max_unwrapped_chars:
        collector.note_once(f"values decoded past {limits.max_unwrapped_chars} characters in all:"
                            " the rest not decoded")
        return None
    min_blob = limits.min_blob_length
    found = _decode_short(text, min_blob) if len(text) <= 64 else _decode_once(text, min_blob)
    if found is not None:
        collector.unwrapped += len(found[0])
        return found[0], (*layers, found[1])
    if text.startswith(_PACKED_HEADS) and len(text) >= min_blob:
        packed = _inflated_value(collector, text)
        if packed is not None:
            collector.unwrapped += len(packed[0])
            return packed[0], (*layers, *packed[1])
    binary = _binary_of(text) if len(text) >= max(min_blob, _MIN_BINARY_BLOB) else None
    if binary is not None:
        collector.unwrapped += len(binary)
        return binary, (*layers, "hex" if _is_hex(text) else "base64")
    return None


# How a compressed stream's first bytes begin in base64 and in hex (gzip, zstd, zlib at its
# four levels): the only values worth decoding to look for one
_PACKED_HEX_HEADS = ("1f8b08", "28b52ffd", "7801", "785e", "789c", "78da")
_PACKED_HEADS = ("H4sI", "KLUv", "eJ", "eN", "eA", "eF", *_PACKED_HEX_HEADS,
                 *(head.upper() for head in _PACKED_HEX_HEADS))


def _inflated_value(collector: Collector, text: str
                    ) -> tuple[str | bytes, tuple[str, str]] | None:
    """(contents, (encoding, compression)) of a compressed stream in base64 or hex
    (``H4sI...``: apps gzip what they send, then base64 it into JSON), or None.  The
    contents are text, or bytes when they are not (a protobuf).  Everything inflated from
    values shares one flow's ``max_decoded_bytes``."""
    encoding = "hex" if text[:1].isdigit() else "base64"
    if encoding == "hex":
        raw = bytes.fromhex(text) if _is_hex(text) else None
    else:  # MIME-style base64 (Android's Base64.DEFAULT) breaks lines every 76 characters
        raw = base64_bytes(text.replace("\r", "").replace("\n", "") if "\n" in text else text)
    compression = _compression(raw) if raw is not None else None
    if raw is None or compression is None:
        return None
    cap = collector.limits.max_decoded_bytes - collector.inflated
    if cap <= 0:
        collector.note_once("decompression limit hit: compressed values past the flow's "
                            f"{collector.limits.max_decoded_bytes} bytes not inflated")
        return None
    try:
        inflated, hit_cap = decompress(raw, compression, cap, collector.deadline)
    except DamagedStream as e:  # what came before the damage counts, and is read
        inflated, hit_cap = e.produced, False
    except ValueError:
        return None  # binary that only starts like it
    collector.inflated += len(inflated)
    if collector.expired(exact=True) or not inflated:
        return None
    if hit_cap:
        collector.truncated = True
        collector.note_once(f"decompression limit hit: {compression} value cut at {cap} bytes")
    return is_texty(inflated) or inflated, (encoding, compression)


def _compression(raw: bytes) -> str | None:
    """The compression ``raw`` starts as: gzip or zstd by magic, zlib (``deflate``) by its
    header's check bits; else None."""
    for magic, compression in _MAGIC:
        if raw.startswith(magic):
            return compression
    if len(raw) > 2 and raw[0] == 0x78 and not (raw[0] << 8 | raw[1]) % 31 and not raw[1] & 0x20:
        return "deflate"
    return None


def _decode_once(text: str, min_blob: int) -> tuple[str, str] | None:
    """(decoded text, the encoding undone) one encoding below ``text``, or None."""
    if "%" in text and _PERCENT.search(text):
        decoded = unquote_text(text)
        if decoded != text:
            return decoded, "url"
    if "&" in text and _ENTITY.search(text):  # markup's character references: &#56;&#54;...
        unescaped = html.unescape(text)
        if unescaped != text:
            return unescaped, "html"
    if "\\" in text and _CODE_ESCAPE.search(text):  # \u0038 or \x38 outside a JSON parser
        return _CODE_ESCAPE.sub(_unescaped, text), "escape"
    if len(text) < min_blob:
        return None
    if _is_hex(text):
        decoded_hex = decode_hex_text(text)
        if decoded_hex is not None:
            return decoded_hex, "hex"
    # MIME-style base64 (Android's Base64.DEFAULT) breaks lines every 76 characters
    compact = text.replace("\r", "").replace("\n", "") if "\n" in text else text
    if _is_base64(compact):
        decoded_b64 = decode_base64_text(compact)
        if decoded_b64 is not None:
            return decoded_b64, "base64"
    return None


def unwraps(text: str, min_blob: int) -> bool:
    """Whether :func:`expand_text` would find an encoding to undo in ``text``."""
    return unwrapped(text, min_blob) is not None or (
        text.startswith(_PACKED_HEADS) and packed(text, min_blob)) or (
        len(text) >= max(min_blob, _MIN_BINARY_BLOB) and _binary_of(text) is not None)


# Base64 or hex of binary that holds text (a protobuf with a string field: SDKs base64 what
# they serialise into JSON): at least this long (18 bytes), with 8 printable bytes in a row
_MIN_BINARY_BLOB = 24
_TEXT_IN_BINARY = re.compile(rb"[\x20-\x7e]{8}")


def binary_with_text(text: str) -> bytes | None:
    """The bytes of ``text``, hex or else base64, of something that is not text but holds
    8 printable bytes in a row; else None.  (Hex is not also read as base64 here, as
    :func:`_decode_once` reads it: 24 hex digits are no serialised message's base64.)"""
    compact = text.replace("\r", "").replace("\n", "") if "\n" in text else text
    if _is_hex(compact):
        raw: bytes | None = bytes.fromhex(compact)
    else:
        raw = base64_bytes(compact) if _is_base64(compact) else None
    if raw is None or _TEXT_IN_BINARY.search(raw) is None or is_texty(raw) is not None:
        return None
    return raw


def packed(text: str, min_blob: int) -> bool:
    """Whether ``text`` is base64 or hex whose bytes start as a compressed stream does
    (by its first characters alone: nothing is inflated)."""
    if len(text) < min_blob:
        return False
    if text[:1].isdigit():
        head = bytes.fromhex(text[:8]) if _is_hex(text[:8]) else b""
    else:
        head = base64_bytes(text[:8]) or b""
    return _compression(head + b"\0") is not None


def unwrapped(text: str, min_blob: int) -> str | None:
    """The text one encoding below ``text``, as :func:`expand_text` would find it, or None."""
    found = _decode_short(text, min_blob) if len(text) <= 64 else _decode_once(text, min_blob)
    return None if found is None else found[0]


_BLOB_CHARACTERS = _BASE64_ALPHABETS[0] + "-_="
_BLOB_BYTES = _BLOB_CHARACTERS.encode("ascii")
# Each decoded byte as a letter: "p" printable ASCII (tab, LF and CR too), "c" another
# control, "k" a UTF-8 continuation, "2"/"3"/"4" the lead of a sequence of that length,
# "x" a byte UTF-8 never holds, "|" 0xFF: never in UTF-8 either, and put between runs.
_BYTE_KINDS = bytes(
    ord("p") if 0x20 <= byte < 0x7F or byte in (9, 10, 13)
    else ord("c") if byte < 0x80
    else ord("k") if byte < 0xC0
    else ord("2") if 0xC2 <= byte <= 0xDF
    else ord("3") if 0xE0 <= byte <= 0xEF
    else ord("4") if 0xF0 <= byte <= 0xF4
    else ord("|") if byte == 0xFF
    else ord("x")
    for byte in range(256)
)
# A run shaped like UTF-8 (overlong and surrogate forms aside) from separator to separator.
# Possessive: the alternatives begin with different kinds, so giving one back never helps
# (the same matches, without retrying the lookahead at each step back: a third less time).
_UTF8_RUN = re.compile(rb"\|(?:[pc]|2k|3kk|4kkk)++(?=\|)")
# Eight printable bytes in a row (_TEXT_IN_BINARY): a bytes.find first, most bodies have none
_PRINTABLE_KINDS = b"p" * 8
_PRINTABLE_RUN = re.compile(rb"p{8,}")


def unwrapping(texts: Sequence[str], min_blob: int) -> set[str]:
    """Those of ``texts`` that :func:`unwraps`, for the ids and tokens of a body at once.

    Texts made of anything but ``A-Za-z0-9+/=_-`` (a ``%``, a line break)
    are asked one by one.  Most others are random, and random bytes are
    seldom UTF-8, let alone text: the hex ones are decoded in one call, the
    base64 ones of whole groups in another, with 0xFF bytes (never in UTF-8)
    between two, and one regular expression over the kinds of the decoded
    bytes finds the runs shaped like UTF-8 from separator to separator.  Only
    their texts are asked :func:`unwraps`, and those not of whole groups of
    four (as base64), which are mostly words that come back in every flow.
    """
    odd: set[str] = set()  # a percent sign decodes at any length
    if "".join(texts).encode("utf-8", "surrogatepass").translate(None, _BLOB_BYTES):
        odd = {text for text in texts if text.strip(_BLOB_CHARACTERS)}
    if odd or min(map(len, texts), default=0) < min_blob:
        texts = [text for text in texts if len(text) >= min_blob and text not in odd]
    lower, upper = _HEX_DIGITS  # _is_hex, inline: these loops run for every id of a body
    hexes = [text for text in texts
             if not len(text) % 2 and (not text.strip(lower) or not text.strip(upper))]
    maybe = _utf8_shaped(hexes, bytes.fromhex("ff" + "ff".join(hexes) + "ff"), _HEX_LAYOUT)
    whole = [text for text in texts if not len(text) % 4 and "=" not in text]
    padded = [text for text in texts if len(text) % 4 or "=" in text]
    run = ("////" + "////".join(whole) + "////").encode("ascii")
    try:
        decoded = binascii.a2b_base64(run.translate(_URL_SAFE_TO_STANDARD), strict_mode=True)
        maybe.update(_utf8_shaped(whole, decoded, _BASE64_LAYOUT))
    except binascii.Error:  # a text of another alphabet: one by one
        padded = list(texts)
    # the rest one by one: most are words (event and screen names) that come back flow
    # after flow, and unwraps remembers short ones
    found = {text for text in (*maybe, *odd, *padded) if unwraps(text, min_blob)}
    if _PACKED_START.search("\0" + "\0".join(texts)):  # a compressed stream, base64 or hex?
        found.update(text for text in texts
                     if text.startswith(_PACKED_HEADS) and packed(text, min_blob))
    return found


_PACKED_START = re.compile("\0(?:H4sI|KLUv|e[AFJN]|(?i:1f8b08|28b52ffd|78(?:01|5e|9c|da)))")


class _Layout(NamedTuple):
    """How texts were joined before one decoding: ``separator`` characters before, between
    and after them, and each ``chars`` characters of the join became ``size`` bytes."""

    separator: int
    chars: int
    size: int


_HEX_LAYOUT = _Layout(separator=2, chars=2, size=1)  # "ff" between: one 0xFF byte
_BASE64_LAYOUT = _Layout(separator=4, chars=4, size=3)  # "////" between: three 0xFF bytes


def _utf8_shaped(texts: list[str], decoded: bytes, layout: _Layout) -> set[str]:
    """Those of ``texts`` whose bytes are shaped like UTF-8: ``decoded`` is their join (as
    ``layout`` says) decoded, each text's bytes after 0xFF bytes, and 0xFF bytes at the end.

    A 0xFF inside a text's bytes cuts them in two: a part may look like UTF-8,
    and the text is named anyway (asked again exactly), never the reverse.
    """
    if not texts:
        return set()
    kinds = decoded.translate(_BYTE_KINDS)
    runs = [run.start() for run in _UTF8_RUN.finditer(kinds)]
    if _PRINTABLE_KINDS in kinds:  # binary that holds text (binary_with_text): asked too
        runs += [run.start() for run in _PRINTABLE_RUN.finditer(kinds)]
    if not runs:
        return set()
    # Where each text's separator begins in the join, in characters: native loops only
    # (most bodies have no run; a body of ids has a hundred texts).
    separators = list(itertools.accumulate(
        map(operator.add, map(len, texts[:-1]), itertools.repeat(layout.separator)), initial=0))
    # A run starts on the last 0xFF of a separator, or on one inside a text's bytes: the
    # text is the last whose separator begins at or before it, in bytes.
    last = layout.separator * layout.size // layout.chars - 1
    return {texts[bisect_right(separators, (start - last) * layout.chars // layout.size) - 1]
            for start in runs}


# Short values repeat from flow to flow (event names, ids, tokens): their decoding is kept.
_decode_short = lru_cache(maxsize=16_384)(_decode_once)
_binary_short = lru_cache(maxsize=4096)(binary_with_text)  # a device id's hash, flow after flow


def _binary_of(text: str) -> bytes | None:
    """:func:`binary_with_text`, remembered for short texts."""
    return _binary_short(text) if len(text) <= 64 else binary_with_text(text)


FORM_PAIR = re.compile(r"(?<![^&])([^&=]*)=([^&]+)")


def form_pairs(text: str) -> Iterator[tuple[str, str]]:
    """The pairs of ``parse_qsl(text)`` with a value, decoded alike, one at a time.

    A 16 MB form of empty fields is 5 million pairs: not a list to build.
    """
    for match in FORM_PAIR.finditer(text):
        name, value = match.groups()
        yield _unquote_form(name), _unquote_form(value)


def _unquote_form(text: str) -> str:
    """``unquote_plus(text)``, without its cost for the many values it would not change."""
    return unquote_text(text, plus=True) if "%" in text or "+" in text else text


_UNQUOTE_PIECE = 1 << 20


def unquote_text(text: str, plus: bool = False) -> str:
    """``unquote(text)`` (``unquote_plus`` with ``plus``), a megabyte at a time when the text
    is long ASCII: urllib splits a text at every ``%`` at once, about 50 bytes of objects a
    ``%`` (16 MB of ``%25`` took 500 MB).  A piece never ends inside an escape, and the
    bytes of all pieces are read as UTF-8 together, as urllib reads them."""
    if len(text) <= _UNQUOTE_PIECE or not text.isascii():
        return unquote_plus(text) if plus else unquote(text)
    if plus:
        text = text.replace("+", " ")
    pieces: list[bytes] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + _UNQUOTE_PIECE)
        escape = text.rfind("%", end - 2, end) if end < len(text) else -1
        end = escape if escape > start else end  # "%2" | "5": the escape goes whole to the next
        pieces.append(unquote_to_bytes(text[start:end]))
        start = end
    return b"".join(pieces).decode("utf-8", "replace")


def _walk_structured(
    collector: Collector, path: str, text: str, layers: tuple[str, ...], depth: int
) -> bool:
    """Walk ``text`` if it is JSON or a form string; False when it is neither.

    A document inside a string counts as one more level of nesting (encodings
    are counted apart, in ``layers``): JSON in a JSON string in a JSON
    string... would otherwise recurse until the interpreter gives up.
    """
    if _looks_like_json(text):
        parsed = parse_json(text, collector, quiet=True)
        if parsed is not _INVALID:
            walk_structure(collector, f"{path}.json", parsed, layers, nesting=depth + 1)
            return True
    if _FORM.fullmatch(text):
        for name, value in form_pairs(text):
            if collector.full:
                break
            expand_text(collector, f"{path}.form.{name}", value, layers, name, f"{path}.form",
                        depth=depth + 1)
        return True
    return False


# --------------------------------------------------------------------------
# Structured bodies.

_INVALID = object()


class JsonNumber(str):
    """A JSON number, kept as its exact text: a value, never an encoding to undo."""

    __slots__ = ()


class RepeatedNames(dict):
    """A JSON object that names a member more than once.  json.loads keeps the last value;
    an earlier one may be the leak (``{"imei": "8653...", "imei": "0"}``), so the tree keeps
    every (name, value) pair in ``pairs``, and :func:`members` walks them all."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, object]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def _object_of(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object as json.loads builds it, or :class:`RepeatedNames` when it repeats one."""
    node = dict(pairs)
    return node if len(node) == len(pairs) else RepeatedNames(pairs)


_REPEATED_NOTE = "JSON object names a member twice: each of its values read"


def members(node: dict) -> Iterable[tuple[object, object]]:
    """Every (name, value) of a parsed object, a repeated name's earlier values too."""
    return node.pairs if type(node) is RepeatedNames else node.items()


def parse_json(text: str | bytes, collector: Collector, quiet: bool = False) -> object:
    """Parsed JSON with numbers kept as their exact text, or ``_INVALID``.

    ``quiet`` is for text that only looks like JSON: failing is no problem.
    """
    if _too_many_nodes(collector, "JSON", text, (",", "[", "{")):
        return _INVALID
    try:
        return json.loads(text, parse_int=JsonNumber, parse_float=JsonNumber,
                          parse_constant=JsonNumber, object_pairs_hook=_object_of)
    except RecursionError:
        collector.note_once("JSON nested too deeply to parse")
    except (ValueError, TypeError) as e:
        if not quiet:
            collector.note(f"malformed JSON: {e}")
    return _INVALID


def _too_many_nodes(
    collector: Collector, kind: str, text: str | bytes, marks: tuple[str, ...]
) -> bool:
    """Whether ``text`` would parse into more nodes than the budget (counted by ``marks``)."""
    limit = collector.limits.max_parsed_values
    if len(text) <= limit:
        return False
    if isinstance(text, bytes):
        estimate = sum(text.count(mark.encode()) for mark in marks)
    else:
        estimate = sum(text.count(mark) for mark in marks)
    if estimate <= limit:
        return False
    collector.note_once(f"{kind} with about {estimate} values, more than {limit}: scanned as text")
    return True


def walk_structure(
    collector: Collector,
    path: str,
    node: object,
    layers: tuple[str, ...] = (),
    key: str | None = None,
    parent: str | None = None,
    depth: int = 0,
    nesting: int = 0,
) -> None:
    """Leaves of a parsed JSON-like tree (dicts, lists, scalars).

    ``depth`` is the depth inside this tree, ``nesting`` how deep the tree
    itself sits in decoded strings (see :func:`expand_text`).  A plain string
    child (most are) becomes a leaf right here, without a call per value.
    """
    if collector.full:
        return
    if depth > collector.limits.max_structure_depth:
        _walk_deep(collector, path, node, layers, key, nesting)
        return
    if isinstance(node, dict):
        if type(node) is RepeatedNames:
            collector.note_once(_REPEATED_NOTE)
        if node and _NAME_MARKS.search(_names(node)):
            _names_as_values(collector, path, node, layers, nesting)
        children: Iterable[tuple[str, object, str | None]] = (
            (f"{path}.{name}", child, str(name)) for name, child in members(node))
    elif isinstance(node, list):
        children = ((f"{path}[{index}]", child, key) for index, child in enumerate(node))
    else:
        _walk_scalar(collector, path, node, layers, key, parent, nesting)
        return
    limits, append = collector.limits, collector._append
    for child_path, child, child_key in children:
        # a plain value (most are) is a leaf at once, without a call of its own
        kind = type(child)
        if kind is JsonNumber or (kind is str and plain_value(child, limits)  # type: ignore[arg-type]
                                  and "eyJ" not in child  # type: ignore[operator]  # a token: followed
                                  and not may_be_labelled(child)):  # type: ignore[arg-type]
            if child and not append(Leaf(child_path, str(child), layers, child_key, path)):
                return
            continue
        walk_structure(collector, child_path, child, layers, child_key, path, depth + 1, nesting)
        if collector.full:
            return


# A name that may be a value itself: an object keyed by a device id, a phone number, an
# address, something escaped, or a token of 16 or more characters with a digit, "+", "/" or
# "=" in it (base64 or hex: {"ODY1MzEyMzQ1Njc4OTAx": 1}), not a long name of words
_VALUE_IN_NAME = re.compile(r"[0-9]{6}|@|%[0-9A-Fa-f]{2}|&#|\\[ux]"
                            r"|(?<![0-9A-Za-z+/=_-])(?=[0-9A-Za-z+/=_-]{16})[A-Za-z_-]*[0-9+/=]")


# What every such name holds at least one of: one class, searched over all the names of an
# object at once (0.2 us; the full expression takes 3 us over the same names)
_NAME_MARKS = re.compile(r"[0-9@%&\\+/=]")


def names_that_may_be_values(names: Sequence[str]) -> list[int]:
    """The indices of those of a form's or query's ``names`` that may be values themselves
    (:data:`_VALUE_IN_NAME`).  Only a sign (``@ % & \\ + / =``) or six digits in a row,
    looked for in C over all of them at once, sends them to the full expression: a digit
    anywhere would send every ``c[12][phone]`` of a contacts form, at 0.3 us each.  (A
    name of base64 with no sign is left to the known-value gates.)"""
    joined = "\0".join(names)
    if any(sign in joined for sign in _NAME_SIGNS) or _SIX_DIGITS in joined.encode(
            "utf-8", "surrogatepass").translate(_DIGITS_AS_NINE):
        return [index for index, name in enumerate(names) if _VALUE_IN_NAME.search(name)]
    return []


_NAME_SIGNS = "@%&\\+/="
_DIGITS_AS_NINE = bytes.maketrans(b"0123456789", b"9" * 10)
_SIX_DIGITS = b"9" * 6


def _may_be_value(name: str) -> bool:
    """Whether one name may be a value itself (:data:`_VALUE_IN_NAME`), its marks asked first."""
    return _NAME_MARKS.search(name) is not None and _VALUE_IN_NAME.search(name) is not None


def _names(node: dict) -> str:
    """The names of ``node`` joined by NUL (JSON's are text; another tree's may not be)."""
    try:
        return "\0".join(node)
    except TypeError:
        return "\0".join(map(str, node))


def _names_as_values(collector: Collector, path: str, node: dict, layers: tuple[str, ...],
                     nesting: int) -> None:
    """The names of ``node`` that may be values, each read as a value at its member's path."""
    for name in node:
        text = str(name)
        if _VALUE_IN_NAME.search(text):
            expand_text(collector, f"{path}.{text}", text, layers, None, path, nesting)


def _deep_note(limits: Limits) -> str:
    return (f"structure deeper than {limits.max_structure_depth}: "
            "the deeper values read under one path")


def _walk_deep(collector: Collector, path: str, node: object, layers: tuple[str, ...],
               key: str | None, nesting: int) -> None:
    """The rest of a tree below ``max_structure_depth``, without recursion: every value in
    it, at ``path`` followed by ``…`` (a path as deep as the tree would cost its depth in
    every leaf), under the name it has in its object."""
    collector.note_once(_deep_note(collector.limits))
    deeper = f"{path}.…"
    pending: list[tuple[object, str | None]] = [(node, key)]
    while pending and not collector.full:
        node, key = pending.pop()
        if isinstance(node, dict):
            pending += reversed([(child, str(name)) for name, child in members(node)])
            if _NAME_MARKS.search(_names(node)):
                pending += [(str(name), None) for name in node if _may_be_value(str(name))]
        elif isinstance(node, list):
            pending += reversed([(child, key) for child in node])
        else:
            _walk_scalar(collector, deeper, node, layers, key, path, nesting)


def _walk_scalar(collector: Collector, path: str, node: object, layers: tuple[str, ...],
                 key: str | None, parent: str | None, nesting: int) -> None:
    if isinstance(node, str):
        expand_text(collector, path, node, layers, key, parent, depth=nesting)
    elif isinstance(node, bool):
        collector.add(Leaf(path, "true" if node else "false", layers, key, parent))
    elif node is not None:
        collector.add(Leaf(path, str(node), layers, key, parent))


# --------------------------------------------------------------------------
# A JSON document walked only where the classifier's raw scans found something.

_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_SPACE_CHARACTERS = " \t\n\r"
# json.loads' own scanner, one value at a time: (value, end offset) in C
_scan_value: Callable[[str, int], tuple[object, int]] = json.JSONDecoder(
    parse_int=JsonNumber, parse_float=JsonNumber, parse_constant=JsonNumber,
).scan_once  # type: ignore[attr-defined]  # not in typeshed
# the same, with a repeated name's earlier values kept (RepeatedNames): for what is walked
_scan_members: Callable[[str, int], tuple[object, int]] = json.JSONDecoder(
    parse_int=JsonNumber, parse_float=JsonNumber, parse_constant=JsonNumber,
    object_pairs_hook=_object_of,
).scan_once  # type: ignore[attr-defined]  # not in typeshed
_scan_name: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
# A hot container longer than this is read again child by child, to skip its quiet ones.
_SKIM_CONTAINER_CHARS = 256


class _Unskimmable(ValueError):
    """The document is not one that json.loads would read the same way: walk it plainly."""


class _HotSkim:
    """The children of a JSON document that hold a hot offset, found by position.

    Every child is parsed by json's C scanner, which also gives its end; a
    child whose span (its name included) holds no hot offset is dropped
    unwalked.  A hot child is kept whole, unless it is a long container hot
    only inside: that one is read again the same way.  ``kept`` lists
    (path, node, key, parent path, depth) as :func:`walk_structure` would
    walk them, in document order.  Children are read in document order, so
    the next hot offset is a pointer that only moves forward.  A name an
    object repeats names a child each time (json.loads would keep the last
    value only): ``repeated`` says one did.
    """

    def __init__(self, text: str, hot: list[int]) -> None:
        self.text, self.hot, self.next_hot = text, hot, 0
        self.kept: list[tuple[str, object, str | None, str, int]] = []
        self.repeated = False

    def _space(self, at: int) -> int:
        """The first offset from ``at`` that is not JSON whitespace."""
        text = self.text
        if at < len(text) and text[at] in _JSON_SPACE_CHARACTERS:
            return _JSON_SPACE.match(text, at).end()  # type: ignore[union-attr]  # always matches
        return at

    def _hot_before(self, end: int) -> bool:
        """Whether a hot offset not yet passed lies before ``end``."""
        hot, index = self.hot, self.next_hot
        return index < len(hot) and hot[index] < end

    def _pass(self, end: int) -> None:
        """Move the pointer past the hot offsets before ``end``."""
        hot, index = self.hot, self.next_hot
        while index < len(hot) and hot[index] < end:
            index += 1
        self.next_hot = index

    def container(self, at: int, path: str, key: str | None, depth: int) -> int:
        """Read the object or array at ``at``; its end offset."""
        if self.text[at] == "{":
            return self._object(at, path, depth)
        return self._array(at, path, key, depth)

    def _object(self, at: int, path: str, depth: int) -> int:
        text, names, space = self.text, set(), self._space
        at = space(at + 1)
        if text[at] == "}":
            return at + 1
        while True:
            if text[at] != '"':
                raise _Unskimmable("a name expected")
            name, after = _scan_name(text, at + 1)
            if name in names:
                self.repeated = True
            names.add(name)
            colon = space(after)
            if text[colon] != ":":
                raise _Unskimmable("a colon expected")
            end = self._child(space(colon + 1), at, path, name, name, depth)
            at, closed = self._after(end, "}")
            if closed:
                return at

    def _array(self, at: int, path: str, key: str | None, depth: int) -> int:
        text, space = self.text, self._space
        at = space(at + 1)
        if text[at] == "]":
            return at + 1
        for index in itertools.count():
            at, closed = self._after(self._child(at, at, path, index, key, depth), "]")
            if closed:
                return at
        raise AssertionError  # pragma: no cover - itertools.count() does not end

    def _after(self, end: int, closer: str) -> tuple[int, bool]:
        """After the child ending at ``end``: past the container's ``closer`` (True), or
        at the next child (False)."""
        at = self._space(end)
        if self.text[at] == closer:
            return at + 1, True
        if self.text[at] != ",":
            raise _Unskimmable("a comma expected")
        return self._space(at + 1), False

    def _child(self, at: int, start: int, parent: str, name: str | int, key: str | None,
               depth: int) -> int:
        """Read the value at ``at`` (its span with its name from ``start``); its end.

        ``name`` is the child's name in an object, or its index in an array.
        """
        node, end = _scan_value(self.text, at)
        if not self._hot_before(end):
            return end
        path = f"{parent}[{name}]" if type(name) is int else f"{parent}.{name}"
        if type(name) is str and _may_be_value(name):  # the name may be a value itself
            self.kept.append((path, name, None, parent, depth + 1))
        if (end - at > _SKIM_CONTAINER_CHARS and type(node) in (dict, list)
                and not self._hot_before(at)):  # hot only inside: skim it too
            self.container(at, path, key, depth + 1)
        else:  # hot by its name, or small: walked whole, every member of it
            if type(node) in (dict, list):  # a name it repeats inside: both values
                node = _scan_members(self.text, at)[0]
            self.kept.append((path, node, key, parent, depth + 1))
        self._pass(end)
        return end


_SIMDJSON_MAX_BYTES = 1 << 20  # a parser keeps the room its largest document took
_simdjson = threading.local()  # one parser per thread: a parser is not safe to share


def _reads_as_json(body: bytes) -> bool:
    """Whether ``json.loads(body)`` would succeed, without building what it would.

    simdjson validates a document (its UTF-8 too) in C several times faster
    than json.loads parses it.  It is stricter: what it refuses (NaN, a
    lone surrogate escape, an integer beyond 64 bits, a byte-order mark) is
    asked of json.loads, so the answer is json.loads' own.
    """
    if len(body) <= _SIMDJSON_MAX_BYTES:
        try:
            parser = _simdjson.parser
        except AttributeError:
            parser = _simdjson.parser = simdjson.Parser()
        try:
            parser.parse(body)  # the document it returns is dropped at once: the parser is free
            return True
        except Exception:  # refused (ValueError, RuntimeError) or anything else: json.loads says
            pass
    try:
        json.loads(body)
    except (ValueError, RecursionError):  # a number too long for int() too: walk it whole
        return False
    return True


def walk_hot_json(collector: Collector, path: str, body: bytes, hot: list[int]) -> bool:
    """Walk the parts of the JSON document ``body`` that hold an offset of ``hot`` (sorted).

    False, with nothing walked, when the document is not an object or array
    that json.loads would read: the caller then parses and walks it whole.
    A valid document with nothing hot is not walked.  A repeated name's
    values are each read (where json.loads would keep the last), and noted.
    """
    if not hot:  # nothing to walk: whether it is JSON at all
        return _reads_as_json(body)
    try:
        text = body.decode("utf-8")
        skim = _HotSkim(text, hot)
        at = skim._space(0)
        if text[at : at + 1] not in ("{", "["):
            return False
        if skim._space(skim.container(at, path, None, 0)) != len(text):
            return False
    except (ValueError, StopIteration, IndexError, RecursionError):  # _Unskimmable is one
        return False
    if skim.repeated:
        collector.note_once(_REPEATED_NOTE)
    limits, append = collector.limits, collector._append
    for child_path, child, key, parent, depth in skim.kept:
        kind = type(child)
        if kind is JsonNumber or (kind is str and plain_value(child, limits)  # type: ignore[arg-type]
                                  and "eyJ" not in child  # type: ignore[operator]  # a token: followed
                                  and not may_be_labelled(child)):  # type: ignore[arg-type]
            if child and not append(Leaf(child_path, str(child), (), key, parent)):
                return True
            continue
        walk_structure(collector, child_path, child, (), key, parent, depth, 0)
        if collector.full:
            return True
    return True


def _walk_xml(collector: Collector, path: str, element: object, depth: int = 0) -> None:
    if collector.full:
        return
    if depth > collector.limits.max_structure_depth:
        _walk_deep_xml(collector, path, element)
        return
    tag = str(getattr(element, "tag", "node")).rsplit("}", 1)[-1]
    here = f"{path}.{tag}"
    for name, value in getattr(element, "attrib", {}).items():
        expand_text(collector, f"{here}.@{name}", value, key=name, parent=here)
    text = (getattr(element, "text", None) or "").strip()
    if text:
        expand_text(collector, here, text, key=tag, parent=path)
    for child in list(element):  # type: ignore[call-overload]
        _walk_xml(collector, here, child, depth + 1)
        tail = (getattr(child, "tail", None) or "").strip()  # mixed content: <a>x<b/>tail</a>
        if tail and not collector.full:
            expand_text(collector, here, tail, key=tag, parent=path)


def _walk_deep_xml(collector: Collector, path: str, element: Any) -> None:
    """The rest of an XML tree below ``max_structure_depth``: every attribute and text in
    it, at ``path`` followed by ``…``, found by ``Element.iter`` (no recursion)."""
    collector.note_once(_deep_note(collector.limits))
    deeper = f"{path}.…"
    for node in element.iter():
        if collector.full:
            return
        tag = str(node.tag).rsplit("}", 1)[-1]
        for name, value in node.attrib.items():
            expand_text(collector, deeper, value, key=name, parent=path)
        for text in (node.text, node.tail if node is not element else None):
            if text and text.strip():
                expand_text(collector, deeper, text.strip(), key=tag, parent=path)


# Parsers are fed this much at a time, with a look at the clock in between
# (an element of a deeply nested document costs a few microseconds).
_FEED = 8 * 1024


def decode_xml(collector: Collector, path: str, body: bytes) -> bool:
    if _too_many_nodes(collector, "XML", body, ("<", "=")):
        return False
    try:  # what defusedxml's fromstring does, fed piece by piece
        parser = SafeET.DefusedXMLParser(target=TreeBuilder())
        for start in range(0, len(body), _FEED):
            if collector.expired(exact=True) or collector.full:  # out of time: not read
                return True
            parser.feed(body[start : start + _FEED])
        root = parser.close()
    except Exception as e:  # defusedxml raises several unrelated types
        collector.note(f"malformed XML: {type(e).__name__}: {e}")
        return False
    _walk_xml(collector, f"{path}.xml", root)
    _xml_comments(collector, f"{path}.xml.comment", body)
    return True


def _xml_comments(collector: Collector, path: str, body: bytes) -> None:
    """The text of each ``<!-- comment -->`` (the parser drops them), found with
    ``bytes.find``: one pass, however many are left open."""
    start = body.find(b"<!--")
    while start >= 0 and not collector.full:
        end = body.find(b"-->", start + 4)
        if end < 0:
            return
        text = body[start + 4 : end].decode("utf-8", "replace").strip()
        if text:
            expand_text(collector, path, text)
        start = body.find(b"<!--", end + 3)


# The email package parses structured headers slowly and into large trees
# (a 500 kB Content-Disposition takes seconds and hundreds of MB); real part
# headers are a few hundred characters each.
_MAX_MIME_HEADERS = 64 * 1024


def decode_multipart(collector: Collector, path: str, body: bytes, content_type: str) -> bool:
    if "boundary=" not in content_type.lower():
        collector.note("multipart body without a boundary: scanned as text")
        return False
    if len(content_type) > _MAX_MIME_HEADERS:
        collector.note(f"multipart content type of {len(content_type)} characters: scanned as text")
        return False
    # the parser splits lines at CR, LF or CRLF: every part starts a line with "--"
    delimiters = body.count(b"\n--") + body.count(b"\r--") + body.startswith(b"--")
    if delimiters > collector.limits.max_parts:
        collector.note(f"multipart body with about {delimiters} parts, more than "
                       f"{collector.limits.max_parts}: scanned as text")
        return False
    # one header line: a CR or LF in the value must not start a header of its own
    one_line = content_type.replace("\r", " ").replace("\n", " ")
    head = f"Content-Type: {one_line}\r\n\r\n".encode("latin-1", "replace")
    try:
        parser = BytesFeedParser(policy=HTTP)
        parser.feed(head)
        for start in range(0, len(body), 8 * _FEED):
            if collector.expired(exact=True) or collector.full:  # out of time: not read
                return True
            parser.feed(body[start : start + 8 * _FEED])
        message = parser.close()
        parts = list(message.iter_parts()) if message.is_multipart() else []  # type: ignore[attr-defined]
        header_chars = sum(len(value) for part in parts for _, value in part.raw_items())
    except Exception as e:  # the email package raises assorted errors on malformed input
        collector.note(f"multipart body does not parse ({type(e).__name__}): scanned as text")
        return False
    if not parts:
        collector.note("multipart body does not parse: scanned as text")
        return False
    if header_chars > _MAX_MIME_HEADERS:
        collector.note(f"multipart part headers of {header_chars} characters: scanned as text")
        return False
    _walk_parts(collector, f"{path}.multipart", message, parts)
    return True


def _walk_parts(collector: Collector, path: str, message: Any, parts: list[Any],
                depth: int = 0) -> None:
    """Each part of a parsed multipart ``message`` at ``<path>.<name>``, a multipart part's
    own parts inside it (as deep as ``max_depth``), and the text before the first part and
    after the last (the preamble and epilogue, which a server ignores)."""
    for end, text in (("preamble", message.preamble), ("epilogue", message.epilogue)):
        if isinstance(text, str) and text.strip() and not collector.full:
            expand_text(collector, f"{path}.{end}", text.strip())
    for index, part in enumerate(parts):
        if collector.full:
            return
        name, payload, part_type, problems = _mime_part(part, index)
        if problems:  # one broken header must not hide the part, nor the others
            collector.note(f"multipart part {index} does not parse ({', '.join(problems)})")
        _part_headers(collector, f"{path}.{name}", part)
        inner = _inner_parts(part)
        if inner is None:
            decode_payload(collector, f"{path}.{name}", payload, part_type)
        elif depth + 1 >= collector.limits.max_depth:
            collector.note_once(f"multipart nested deeper than {collector.limits.max_depth} "
                                "not read")
        else:
            _walk_parts(collector, f"{path}.{name}.multipart", part, inner, depth + 1)


def _inner_parts(part: Any) -> list[Any] | None:
    """The parts of a part that is multipart itself (``multipart/mixed`` inside a form), or
    None."""
    try:
        return list(part.iter_parts()) if part.is_multipart() else None
    except Exception:  # the email package raises assorted errors on malformed input
        return None


def _part_headers(collector: Collector, path: str, part: Any) -> None:
    """A part's own header fields (a file name in Content-Disposition or in Content-Type's
    ``name``, an X-header), as sent."""
    for header, value in part.raw_items():
        lower = str(header).lower()
        if not collector.full:
            expand_text(collector, f"{path}.headers.{lower}", str(value), key=lower,
                        parent=f"{path}.headers")


def _mime_part(part: Any, index: int) -> tuple[str, bytes, str, list[str]]:
    """Name, decoded body and type of one part, each read on its own; what raised."""
    problems: list[str] = []
    name, payload, part_type = str(index), b"", ""
    try:
        name = collapse_rfc2231_value(part.get_param("name", header="content-disposition") or name)
    except Exception as e:  # the email package raises assorted errors on malformed input
        problems.append(type(e).__name__)
    try:
        decoded = part.get_payload(decode=True)
        payload = decoded if isinstance(decoded, bytes) else b""
    except Exception as e:  # as above
        problems.append(type(e).__name__)
    try:
        part_type = part.get_content_type()
    except Exception as e:  # as above
        problems.append(type(e).__name__)
    return name, payload, part_type, problems


_PRINTABLE_TAIL = re.compile(rb"[\x20-\x7e]*")


def _printable_runs(body: bytes, collector: Collector, minimum: int = 6) -> Iterable[str]:
    """Runs of printable ASCII, a megabyte at a time: between two, a look at the clock."""
    run = re.compile(rb"[\x20-\x7e]{%d,}" % minimum)
    start = 0
    while start < len(body) and not collector.full:
        end = min(len(body), start + _STEP)
        tail = _PRINTABLE_TAIL.match(body, end)  # a run across the cut stays whole
        end = tail.end() if tail else end
        for match in run.finditer(body, start, end):
            yield match.group().decode("ascii")
        start = end


def decode_binary(collector: Collector, path: str, body: bytes, declared: bool = False) -> None:
    """Schema-less protobuf when it parses whole, else printable strings.

    ``declared``: the content type says protobuf, so not parsing is a problem.
    """
    notes: list[str] = []
    fields = protobuf.parse(body, collector.limits.max_structure_depth, notes,
                            max_fields=collector.limits.max_leaves, deadline=collector.deadline)
    for problem in notes:
        collector.note_once(problem)
        collector.truncated |= problem.endswith("the rest not read")
    if fields is not None:
        for field_path, value in fields:
            if collector.full:
                return
            text = value if isinstance(value, str) else str(value)
            parent = f"{path}.protobuf.{field_path.rpartition('.')[0]}".rstrip(".")
            expand_text(collector, f"{path}.protobuf.{field_path}", text, key=field_path,
                        parent=parent)
        return
    if declared:
        collector.note("protobuf body does not parse: scanned for strings")
    for index, run in enumerate(_printable_runs(body, collector)):
        if collector.full:
            return
        expand_text(collector, f"{path}.strings[{index}]", run)


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _kind_of(content_type: str, body: bytes) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("json") or media.endswith("+json"):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media.startswith("multipart/"):
        return "multipart"
    if media.endswith("xml"):
        return "xml"
    if "protobuf" in media or media.startswith("application/grpc"):
        return "protobuf"
    head = body[:64].lstrip()
    if head[:1] in (b"{", b"["):
        return "json"
    if head[:5] == b"<?xml":
        return "xml"
    if media.startswith("text/"):
        return "text"
    if _CONTROL_BYTES.search(body[:_SNIFF]) is None and _starts_texty(body):
        return "text"
    return "binary"  # protobuf's tags and lengths are control bytes; text has none


def grpc_messages(body: bytes, collector: Collector) -> list[bytes]:
    """The messages of a gRPC body: 5-byte frames (flag, length), gzip ones undone."""
    messages, position = [], 0
    while position + 5 <= len(body):
        flag, length = body[position], int.from_bytes(body[position + 1 : position + 5], "big")
        message = body[position + 5 : position + 5 + length]
        position += 5 + length
        if flag & 0x80:
            continue  # gRPC-Web trailers
        if flag & 1:  # compressed with the grpc-encoding; gzip and zstd are told by magic
            encoding = "zstd" if message.startswith(b"\x28\xb5\x2f\xfd") else "gzip"
            undone = undo_content_encoding(message, encoding, collector)
            message = undone if undone is not None else message
        messages.append(message)
    return messages


def _decode_grpc(collector: Collector, path: str, body: bytes, media: str) -> None:
    if media.startswith("application/grpc-web-text"):
        body = base64_bytes(body.decode("ascii", "replace").replace("\n", "")) or body
    messages = grpc_messages(body, collector)
    if not messages:
        decode_binary(collector, path, body, declared=True)
    for index, message in enumerate(messages):
        where = path if len(messages) == 1 else f"{path}.grpc[{index}]"
        decode_binary(collector, where, message, declared=True)


def _name_as_value(collector: Collector, path: str, name: str, parent: str) -> None:
    """A header's name that may be a value (``x-865312345678901: 1``), read as one."""
    if _may_be_value(name) and not collector.full:
        expand_text(collector, path, name, parent=parent)


def _bare_pieces(collector: Collector, path: str, text: str) -> None:
    """The pieces of a form or query with no ``=`` (``?865312345678901``), read as values;
    looked for only where there are fewer ``=`` than pieces."""
    if text.count("=") > text.count("&"):
        return
    index = last = 0  # the piece's index: the "&" before it, counted from the last one
    for count, piece in enumerate(_BARE_PIECE.finditer(text)):  # lazily: no list of pieces
        if collector.full or count >= collector.limits.max_parts:
            return
        index, last = index + text.count("&", last, piece.start()), piece.start()
        expand_text(collector, f"{path}[{index}]", _unquote_form(piece.group(1)), parent=path)


_BARE_PIECE = re.compile(r"(?<![^&])([^&=]+)(?![^&])")


def _decode_form(collector: Collector, path: str, body: bytes) -> bool:
    """A form body's pairs; False (read by its looks instead) when it has no ``=`` at all:
    JSON, XML or a bare value sent as a form."""
    if b"=" not in body:
        return False
    hot = collector.form_hot(body) if collector.form_hot is not None else None
    text = body.decode("utf-8", "replace")
    _bare_pieces(collector, f"{path}.form", text)
    if hot is not None and not hot:
        return True
    pairs: Iterable[tuple[str, str]] = (
        form_pairs(text) if hot is None else hot.values())  # the gate's, decoded already
    names = []
    for name, value in pairs:
        if collector.full:
            return True
        expand_text(collector, f"{path}.form.{name}", value, key=name, parent=f"{path}.form")
        names.append(name)
    _names_as_form_values(collector, f"{path}.form", names)
    return True


def _names_as_form_values(collector: Collector, path: str, names: list[str]) -> None:
    """Those of a form's or query's ``names`` that may be values (``?865312345678901=1``),
    read as values (:func:`names_that_may_be_values`: asked of all at once)."""
    for index in names_that_may_be_values(names):
        if collector.full:
            return
        expand_text(collector, f"{path}.{names[index]}", names[index], parent=path)


def _decode_structured(collector: Collector, path: str, body: bytes, kind: str,
                       content_type: str) -> bool:
    """Decode ``body`` as ``kind``; False when it is not that after all."""
    if kind == "json":
        hot = collector.json_hot(body) if collector.json_hot is not None else None
        if hot is not None and walk_hot_json(collector, f"{path}.json", body, hot):
            return True
        if _json_lines_shaped(body) and _walk_json_lines(collector, path, body):
            return True
        parsed = parse_json(body, collector)
        if parsed is _INVALID:
            return False
        walk_structure(collector, f"{path}.json", parsed)
    elif kind == "form":
        return _decode_form(collector, path, body)
    elif kind == "multipart":
        return decode_multipart(collector, path, body, content_type)
    elif kind == "xml":
        return decode_xml(collector, path, body)
    elif kind in ("protobuf", "binary"):
        media = content_type.split(";", 1)[0].strip().lower()
        if media.startswith("application/grpc"):
            _decode_grpc(collector, path, body, media)
        else:
            decode_binary(collector, path, body, declared=kind == "protobuf")
    else:
        return False
    return True


def _json_lines_shaped(body: bytes) -> bool:
    """Whether ``body`` may be JSON Lines (one document a line: analytics batches, Sentry
    envelopes): its first line closes a document and the next opens one (looked at near the
    first line break only: no copy of a large body)."""
    newline = body.find(b"\n")
    if newline < 0:
        return False
    before = body[max(0, newline - 64) : newline].rstrip()
    after = body[newline + 1 : newline + 65].lstrip()
    return before[-1:] in (b"}", b"]") and after[:1] in (b"{", b"[")


def _walk_json_lines(collector: Collector, path: str, body: bytes) -> bool:
    """Each line of a JSON Lines body walked as its own document, a line that is not JSON
    read as text (an envelope's attachment); False (nothing read) when no line but the first
    is JSON, or the lines are too many."""
    if body.count(b"\n") >= collector.limits.max_parts or _too_many_nodes(
            collector, "JSON", body, (",", "[", "{")):
        return False
    lines = [line for line in body.split(b"\n") if line.strip()]
    documents = [parse_json(line, collector, quiet=True) for line in lines]
    if sum(document is not _INVALID for document in documents[1:]) == 0:
        return False
    texts = 0
    for index, (line, document) in enumerate(zip(lines, documents, strict=True)):
        if collector.full:
            break
        if document is _INVALID:
            texts += 1
            expand_text(collector, f"{path}.jsonl[{index}]", line.decode("utf-8", "replace"))
        else:
            walk_structure(collector, f"{path}.jsonl[{index}]", document)
    if texts:
        collector.note(f"JSON Lines body: {texts} of its {len(lines)} lines not JSON, read as text")
    return True


def decode_payload(collector: Collector, path: str, body: bytes, content_type: str) -> None:
    """Leaves of a (decompressed) body according to its type; text when all else fails."""
    if not body or collector.full:
        return
    body = _unpacked(body, collector)
    if (body[:1] in (b"\xff", b"\xfe", b"\0") or body[1:2] == b"\0"
            or "utf-16" in (content_type or "").lower()):
        utf8 = _utf16_text(body, content_type or "")
        if utf8 is not None:
            collector.note("UTF-16 body: read as text")
            body = utf8
    kind = _kind_of(content_type or "", body)
    if _decode_structured(collector, path, body, kind, content_type or ""):
        return
    text = body.decode("utf-8", "replace")
    if _mostly_text(text):
        expand_text(collector, f"{path}.text", text)
    else:  # not what it says, and not text either: read it as binary
        decode_binary(collector, path, body)


def decode_body(
    collector: Collector,
    path: str,
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
) -> None:
    """Undo Content-Encoding, cap the size, then decode the payload."""
    limit = collector.limits.max_body_bytes
    if len(body) > limit:
        collector.truncated = True
        collector.note(scanned_note("body", len(body), limit))
        body = body[:limit]
    decoded = undo_content_encoding(body, content_encoding, collector)
    if decoded is None:  # scan the body as it came, by its looks (gzip that says it is br)
        if not collector.expired(exact=True):
            inflated = sniffed(body, collector)
            decode_payload(collector, path, inflated, content_type or "" if inflated is not body
                           else "")
        return
    decode_payload(collector, path, decoded, content_type or "")


# --------------------------------------------------------------------------
# A whole exchange.


def _request_leaves(collector: Collector, exchange: Exchange) -> None:
    url = exchange.url or ""
    try:
        parts = split_url(url) if url else None
    except ValueError as e:  # e.g. "Invalid IPv6 URL"
        collector.note(f"malformed URL ({e}): scanned as text")
        expand_text(collector, "request.url", url)
        parts = None
    if parts is not None and "@" in parts.netloc:  # https://user:secret@host/: userinfo
        expand_text(collector, "request.userinfo", unquote(parts.netloc.rpartition("@")[0]))
    if parts is not None and parts.hostname and exchange.header("host") is None:
        # HTTP/2 and 3 name the host in :authority, not in a Host header read below
        _read_place(collector, "request.host", parts.hostname, None)
    if parts is not None and parts.path:
        url_path = unquote(parts.path)
        _read_place(collector, "request.path", url_path, None)
        _path_segments(collector, url_path)
    if parts is not None and parts.query:
        names = []
        for name, value in form_pairs(parts.query):
            if collector.full:
                break
            expand_text(collector, f"request.query.{name}", value, key=name, parent="request.query")
            names.append(name)
        _names_as_form_values(collector, "request.query", names)
        _bare_pieces(collector, "request.query", parts.query)
    for name, value in exchange.request_headers:
        lower = name.lower()
        if lower == "cookie":
            _cookie_leaves(collector, value)
        elif not lower.startswith(":"):
            _read_place(collector, f"request.headers.{lower}", value, lower)
            _name_as_value(collector, f"request.headers.{lower}", lower, "request.headers")
    for name, value in exchange.request_trailers:
        lower = name.lower()
        expand_text(collector, f"request.trailers.{lower}", value, key=lower,
                    parent="request.trailers")
    # two Content-Encoding headers are one list, as RFC 9110 reads them
    encodings = [value for name, value in exchange.request_headers
                 if name.lower() == "content-encoding"]
    decode_body(
        collector,
        "request.body",
        exchange.request_body,
        exchange.header("content-type"),
        ", ".join(encodings) or None,
    )


def _read_place(collector: Collector, path: str, value: str, key: str | None) -> None:
    """The URL path or a header, unless known to hold nothing; noted if it is one leaf."""
    if (path, value) in collector.known_quiet:
        collector.remembered += 1  # the leaf budget is spent as if it were read
        return
    before = len(collector.leaves)
    expand_text(collector, path, value, key=key, parent=None if key is None else "request.headers")
    if len(collector.leaves) == before + 1:
        leaf = collector.leaves[-1]
        if leaf.path == path and leaf.value == value and not leaf.layers:
            collector.single_leaves.append(leaf)


# A path segment that may be base64url or hex (/t/eyJpbWVp.../): the whole segment
_PATH_BLOB = re.compile(r"(?<=/)[A-Za-z0-9+_=-]{16,}(?![^/])")
_MAX_PATH_SEGMENTS = 64


def _path_segments(collector: Collector, url_path: str) -> None:
    """The segments of a URL path that are base64 or hex of text (or of a compressed
    stream), each read at ``request.path[<index>]`` (its place among the segments)."""
    min_blob = collector.limits.min_blob_length
    for segment in itertools.islice(_PATH_BLOB.finditer(url_path), _MAX_PATH_SEGMENTS):
        text = segment.group()
        if collector.full:
            return
        if unwraps(text, min_blob):
            index = url_path.count("/", 0, segment.start()) - 1
            expand_text(collector, f"request.path[{index}]", text, parent="request.path")


_COOKIE = re.compile(r"[^;]+")


def _cookie_leaves(collector: Collector, header: str) -> None:
    for match in _COOKIE.finditer(header):  # not split(): a 10 MB header of ";" is 10M strings
        if collector.full:
            return
        name, _, value = match.group().strip().partition("=")
        if name:
            expand_text(collector, f"request.cookies.{name}", value, key=name,
                        parent="request.cookies")


def _message_leaves(collector: Collector, exchange: Exchange) -> None:
    """The client's messages, each within the body cap and all within the decoded-bytes cap."""
    prefix = "websocket" if exchange.kind in ("http", "websocket") else exchange.kind
    sent = [m for m in exchange.messages if m.from_client]
    limit, budget = collector.limits.max_body_bytes, collector.limits.max_decoded_bytes
    beyond = f"messages beyond {budget} bytes not scanned"
    for index, message in enumerate(sent):
        if collector.full:
            return
        content = message.content
        if len(content) > limit:
            collector.truncated = True
            collector.note(scanned_note(f"message {index}", len(content), limit))
            content = content[:limit]
        if len(content) > budget:
            collector.truncated = True
            collector.note_once(beyond)
            if budget == 0:
                return
            content = content[:budget]
        budget -= len(content)
        declared = "" if message.is_text else "application/octet-stream"
        decode_payload(collector, f"{prefix}.messages[{index}]", content, declared)


# A decimal digit of another script (full-width "８", Arabic-Indic "٨"...), and one written
# percent-encoded (full-width, Arabic-Indic, extended Arabic-Indic, Devanagari)
_OTHER_DIGIT = re.compile(r"[^\D0-9]")
_PERCENT_OTHER_DIGIT = re.compile(r"%(?:EF%BC%9[0-9]|D9%A[0-9]|DB%B[0-9]|E0%A5%A[6-9A-F])",
                                  re.IGNORECASE)
OTHER_DIGITS_NOTE = "digits of another script (full-width...) read as ASCII digits"


def _ascii_digit(digit: re.Match[str]) -> str:
    return str(unicodedata.digit(digit.group()))


def _text_in_ascii_digits(text: str) -> str | None:
    """``text`` with its other digits (raw or percent-encoded) as ASCII; None: none."""
    changed = _PERCENT_OTHER_DIGIT.sub(_unquoted, text) if "%" in text else text
    if not changed.isascii():
        changed = _OTHER_DIGIT.sub(_ascii_digit, changed)
    return None if changed == text else changed


def _unquoted(encoded: re.Match[str]) -> str:
    return unquote(encoded.group())


def _bytes_in_ascii_digits(data: bytes) -> bytes | None:
    if data.isascii():
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    changed = _OTHER_DIGIT.sub(_ascii_digit, text)
    return None if changed == text else changed.encode()


def with_ascii_digits(exchange: Exchange) -> Exchange | None:
    """``exchange`` with the digits of other scripts in its URL, headers, body and
    messages written as ASCII digits, which the patterns and the matcher read; None when it
    has none (checked in C: most requests are ASCII)."""
    places = "\0".join([exchange.url or "", *(value for _n, value in exchange.request_headers)])
    if (exchange.request_body.isascii() and not exchange.messages and places.isascii()
            and ("%" not in places or _PERCENT_OTHER_DIGIT.search(places) is None)):
        return None
    url = _text_in_ascii_digits(exchange.url) if exchange.url else None
    headers = [(name, _text_in_ascii_digits(value) if not value.isascii() or "%" in value
                else None) for name, value in exchange.request_headers]
    body = _bytes_in_ascii_digits(exchange.request_body)
    messages = [_bytes_in_ascii_digits(m.content) if m.from_client else None
                for m in exchange.messages]
    if url is None and body is None and not any(v for _n, v in headers) and not any(messages):
        return None
    return replace(
        exchange, url=url or exchange.url, request_body=body or exchange.request_body,
        request_headers=[(name, changed or value) for (name, changed), (_n, value)
                         in zip(headers, exchange.request_headers, strict=True)],
        messages=[Message(m.from_client, content or m.content, m.is_text)
                  for m, content in zip(exchange.messages, messages, strict=True)])


def exchange_leaves(
    exchange: Exchange,
    limits: Limits | None = None,
    deadline: float | None = None,
    on_batch: Callable[[list[Leaf]], None] | None = None,
    json_hot: Callable[[bytes], list[int] | None] | None = None,
    form_hot: Callable[[bytes], dict[int, tuple[str, str]] | None] | None = None,
    known_quiet: Container[tuple[str, str]] = (),
) -> Collector:
    """Every value the client sent in ``exchange``, with the problems met.

    Decoding stops at ``deadline`` (``time.monotonic()``; None: none), and
    ``on_batch`` sees the leaves in batches as they are kept (see
    :class:`Collector`); the last batch is the caller's to hand over.  Cheap places come
    first: the URL, headers and cookies before the body.
    """
    collector = Collector(limits or Limits(), deadline=deadline, on_batch=on_batch,
                          json_hot=json_hot, form_hot=form_hot, known_quiet=known_quiet)
    in_ascii = with_ascii_digits(exchange)
    if in_ascii is not None:
        collector.note(OTHER_DIGITS_NOTE)
        exchange = in_ascii
    if exchange.request_body_truncated:
        collector.truncated = True
        collector.note("request body was not captured whole")
    for note in exchange.reader_notes:
        collector.truncated = True
        collector.note(note)
    try:
        if exchange.kind in ("http", "websocket"):
            _request_leaves(collector, exchange)
        if exchange.dns_question:
            expand_text(collector, "dns.question", exchange.dns_question)
        _message_leaves(collector, exchange)
    except RecursionError:
        collector.note("decoder error: nesting too deep")
    except Exception as e:  # a decoder bug: keep what was found before it (tests assert none)
        collector.note(f"decoder failed: {type(e).__name__}: {e}")
    return collector
