"""Known values of the device, in every form an app may send them.

Each known value (IMEI, own number, contacts' numbers, ...) is expanded into
its written forms (a phone number in E.164 with or without ``+``, national
with or without the trunk 0, with spaces or dashes) in upper and lower case.

- Reversible encodings of those forms (percent-encoding once or twice,
  base64 standard or URL-safe, hex in either case) go into one hyperscan
  literal database, so the values of a flow are searched for every known
  value at once, in one native scan of their bytes, also where the value
  sits inside a longer string.  Deeper reversible chains
  (``url(base64)``...) need no variants: the decoder unwraps them first.
- Hashes (MD5, SHA-1, SHA-256 and chains two deep such as ``sha256(md5)``)
  go into a table keyed by the raw digest.  Hash-shaped tokens (hex in either
  case, base64 of the raw digest or of its hex) are found with
  ``bytes.translate`` and ``bytes.find`` and looked up there, so every way of
  writing a digest costs one table entry, not four words.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from urllib.parse import quote

import hyperscan
import phonenumbers

from leakmap.core.decode import base64_bytes
from leakmap.core.device import DeviceProfile
from leakmap.core.joined import Joined
from leakmap.core.scanner import Scanner
from leakmap.policies.model import DataType

PHONE_FIELDS = ("phone_number", "contacts", "sms.from")
_HASHES = ("md5", "sha1", "sha256")
_MIN_VARIANT = 6


@dataclass(frozen=True)
class KnownHit:
    """What a variant stands for."""

    data_type: str
    canonical: str
    encoding: str
    # digit strings of the phone number's forms; set for phone numbers only
    phone_digits: frozenset[str] = frozenset()
    # only a value that is this and nothing else counts (a carrier name, a short code)
    whole_value: bool = False


def phone_forms(number: str, region: str | None) -> list[str]:
    """The ways a phone number is written: E.164 with or without ``+``, ``00``,
    national with or without the trunk 0, with spaces, dashes or neither."""
    text = number.strip()
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return [text]
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    international = phonenumbers.format_number(
        parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    trunk = "".join(ch for ch in national if ch.isdigit())
    written = [e164, e164[1:], str(parsed.national_number), trunk, "00" + e164[1:], national,
               international, text]
    untrunked = national[1:].lstrip() if national.startswith("0") else national
    spaced = (national, international, international.lstrip("+"), untrunked)
    written += [*spaced[2:], *(form.replace(" ", "-") for form in spaced)]
    written += [form.replace(" ", "") for form in spaced]
    return _unique(written)


def canonical_phone(number: str, region: str | None) -> str:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return number.strip()
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def _mac_forms(mac: str) -> list[str]:
    digits = "".join(ch for ch in mac if ch.isalnum())
    pairs = [digits[i : i + 2] for i in range(0, len(digits), 2)]
    return _unique([mac, ":".join(pairs), "-".join(pairs), digits])


def _case_forms(value: str) -> list[str]:
    """The value as written, upper- and lower-case: apps hash any of them."""
    return _unique([value, value.upper(), value.lower()])


def _wrap(outer: str, inner: str) -> str:
    return f"{outer}({inner})" if inner else outer


def _b64(raw: bytes) -> Iterator[str]:
    yield base64.b64encode(raw).decode().rstrip("=")
    yield base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _hex_digests(text: str, allowed: set[str]) -> Iterator[tuple[bytes, str]]:
    """(raw digest, encoding) of each hash of ``text`` and each hash of that hash's hex."""
    for name in _HASHES:
        if name not in allowed:
            continue
        digest = hashlib.new(name, text.encode()).digest()
        yield digest, name
        for hexed in (digest.hex(), digest.hex().upper()):
            for outer in _HASHES:
                if outer in allowed:
                    yield hashlib.new(outer, hexed.encode()).digest(), f"{outer}({name})"


def _reversible(text: str, label: str, allowed: set[str]) -> Iterator[tuple[str, str]]:
    if "url" in allowed and (once := quote(text, safe="")) != text:
        yield once, _wrap("url", label)
        yield quote(once, safe=""), _wrap("url", _wrap("url", label))
    if "base64" in allowed:
        for encoded in _b64(text.encode()):
            yield encoded, _wrap("base64", label)
    if "hex" in allowed:
        yield text.encode().hex(), _wrap("hex", label)
        yield text.encode().hex().upper(), _wrap("hex", label)


def _allowed(transforms: tuple[str, ...]) -> set[str]:
    return {step for chain in transforms for step in chain.replace(")", "").split("(")}


def reversible_variants(forms: list[str], transforms: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """(variant, encoding) pairs for the automaton: plain, url, base64, hex."""
    allowed = _allowed(transforms)
    for form in forms:
        for text in _case_forms(form):
            yield text, "plain"
            yield from _reversible(text, "", allowed)


def digest_variants(forms: list[str], transforms: tuple[str, ...]) -> Iterator[tuple[bytes, str]]:
    """(raw digest, encoding) pairs for the digest table."""
    allowed = _allowed(transforms)
    for form in forms:
        for text in _case_forms(form):
            yield from _hex_digests(text, allowed)


_DIGEST_SIZES = (16, 20, 32)
_MIN_RUN = 22
_BASE64_CHARACTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_=-"
# every byte as "A" if base64 can hold it (either alphabet, padding), else NUL
_RUN_MARKS = bytes(0x41 if byte in _BASE64_CHARACTERS else 0 for byte in range(256))
_RUN_START = b"A" * _MIN_RUN
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{32,}")
# every byte as "H" if it is a hex digit, else NUL: a run holds a hex token only if it
# holds 32 "H" in a row
_HEX_DIGIT_BYTES = b"0123456789ABCDEFabcdef"
_HEX_MARKS = bytes(0x48 if byte in _HEX_DIGIT_BYTES else 0 for byte in range(256))
_HEX_START = b"H" * 32
_HEX_SIZES = (32, 40, 64)
# Base64 of a 16/20/32-byte digest, or of a 32/40/64-character hex digest, has this many
# characters before its padding; no other length can decode to a digest.
_B64_CORES = frozenset({22, 27, 43, 54, 86})


def base64_runs(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each maximal run of at least 22 base64 characters in ``data``.

    Every byte becomes a mark (``A`` or NUL, one ``bytes.translate``), and
    ``bytes.find`` looks for 22 ``A`` in a row, then for the NUL that ends
    the run: native calls only, about 30 % less time on 2 KB bodies than one
    hyperscan scan per run did.
    """
    marks = data.translate(_RUN_MARKS)
    start = marks.find(_RUN_START)
    while start >= 0:
        end = marks.find(b"\0", start + _MIN_RUN)
        if end < 0:
            yield start, len(data)
            return
        yield start, end
        start = marks.find(_RUN_START, end)


def digest_spans(data: bytes) -> list[tuple[int, int, bytes, str]]:
    """(start, end, raw digest, outer encoding) for each hash-shaped token in ``data``.

    The outer encoding is ``""`` for hex, ``"base64"`` for base64 of the raw
    digest or of its hex.  A hex token is a run of exactly 32, 40 or 64 hex
    digits; a base64 token is the last ``=``-separated part of a run of
    base64 characters, with at most two ``=`` of padding.  A list, and bytes
    throughout: most runs (a uuid, a long key name) are turned down by a
    length or a native ``translate``/``find``, without a regular expression.
    """
    found: list[tuple[int, int, bytes, str]] = []
    for start, end in base64_runs(data):
        run = data[start:end]
        if end - start in _HEX_SIZES and not run.translate(None, _HEX_DIGIT_BYTES):
            # all one hex token (a digest as a JSON string's whole text): of no base64 length
            found.append((start, end, bytes.fromhex(run.decode("ascii")), ""))
            continue
        if end - start >= 32 and run.translate(_HEX_MARKS).find(_HEX_START) >= 0:
            found += [(start + hex_match.start(), start + hex_match.end(),
                       bytes.fromhex(hex_match.group().decode("ascii")), "")
                      for hex_match in _HEX_RUN.finditer(run)
                      if hex_match.end() - hex_match.start() in _HEX_SIZES]
        digest = _base64_digest(run)
        if digest is not None:
            found.append((start, end, digest, "base64"))
    return found


def _base64_digest(run: bytes) -> bytes | None:
    core = run.rstrip(b"=")
    if len(run) - len(core) > 2:
        return None
    cut = core.rfind(b"=") + 1
    if len(core) - cut not in _B64_CORES:
        return None
    raw = base64_bytes(core[cut:].decode("ascii"))
    if raw is None:
        return None
    if len(raw) in _DIGEST_SIZES:
        return raw
    if len(raw) in _HEX_SIZES and _HEX_RUN.fullmatch(raw):
        return bytes.fromhex(raw.decode("ascii"))
    return None


def _imei_forms(imei: str) -> list[str]:
    """As printed on the box (``35-699370-974431-8``) or spaced.

    Fourteen digits (no check digit) are not tried: that could be another number.
    """
    if not (imei.isdigit() and len(imei) == 15):
        return [imei]
    grouped = [imei[:2], imei[2:8], imei[8:14], imei[14]]
    return _unique([imei, "-".join(grouped), " ".join(grouped),
                    f"{imei[:8]}-{imei[8:14]}-{imei[14]}"])


def _forms(data_type_field: str, value: str, region: str | None) -> list[str]:
    if data_type_field in PHONE_FIELDS:
        return phone_forms(value, region)
    if data_type_field == "mac_address":
        return _mac_forms(value)
    if data_type_field == "imei":
        return _imei_forms(value)
    return [value]


class KnownMatcher:
    """Every known value: written forms in one hyperscan database, digests in a table.

    Hyperscan (Intel's multi-literal matcher, in C) scans bytes for all the
    written forms at once, several hundred MB/s; Python only sees the hits,
    which are checked for word boundaries.  Scans release the GIL and each
    thread has its own scratch space, so flows may be classified on threads.
    """

    def __init__(self, data_types: Iterable[DataType], device: DeviceProfile) -> None:
        self._word_ids: dict[str, int] = {}
        self.words: list[str] = []
        # per word, its hits, each with a number: a small int is cheaper to hash than a KnownHit
        self._word_hits: list[tuple[tuple[int, KnownHit], ...]] = []
        # digest -> the index of its hits in _digest_hit_lists
        self.digests: dict[bytes, int] = {}
        self._digest_hit_lists: list[tuple[KnownHit, ...]] = []
        self._wrapped_hits: dict[tuple[KnownHit, str], KnownHit] = {}  # see _wrapped
        self.known_phones: dict[str, list[KnownHit]] = {}
        # While building: one object per distinct hit, word hit list and digest hit list,
        # shared wherever it recurs. A 1,000-value profile has some 330,000 hits and lists
        # but 5,000 distinct hits: shared, the matcher cache loads in a fraction of the time.
        self._numbered: dict[KnownHit, tuple[int, KnownHit]] = {}
        digest_hits: dict[bytes, list[KnownHit]] = {}
        for data_type in data_types:
            if data_type.known is None:
                continue
            for field_name in data_type.known.fields:
                for value in device.known(field_name):
                    self._add(data_type, field_name, value, device.region, digest_hits)
        self._share_hits(digest_hits)
        self.empty = not self.words and not self.digests
        self._lengths = [len(word.encode("utf-8", "surrogatepass")) for word in self.words]
        self._words = _compile_words(self.words) if self.words else None
        nationals = {_national_digits(e164) for e164 in self.known_phones}
        self._phone_gate = _compile_words(sorted(nationals)) if nationals else None

    def _add(self, data_type: DataType, field_name: str, value: str, region: str | None,
             digest_hits: dict[bytes, list[KnownHit]]) -> None:
        assert data_type.known is not None
        canonical = canonical_phone(value, region) if field_name in PHONE_FIELDS else value
        forms = _forms(field_name, value, region)
        transforms = data_type.known.transforms
        digits = frozenset(
            "".join(ch for ch in form if ch.isdigit()) for form in forms
        ) if field_name in PHONE_FIELDS else frozenset()
        # A carrier name, or a short code such as 10086, is a leak only where it
        # is the whole value: inside other text it is a host name or a number.
        whole_value = field_name == "carrier" or (bool(digits) and min(map(len, digits)) < 7)
        if digits:
            self.known_phones.setdefault(canonical, []).append(
                KnownHit(data_type.name, canonical, "plain", digits, whole_value)
            )
        minimum = 3 if whole_value else _MIN_VARIANT
        for variant, encoding in reversible_variants(forms, transforms):
            if len(variant) >= (minimum if encoding == "plain" else _MIN_VARIANT):
                hit = KnownHit(data_type.name, canonical, encoding,
                               digits if encoding == "plain" else frozenset(),
                               whole_value and encoding == "plain")
                self._add_word(variant, hit)
        for digest, encoding in digest_variants(forms, transforms):
            hits = digest_hits.setdefault(digest, [])
            hit = self._shared(KnownHit(data_type.name, canonical, encoding))[1]
            if hit not in hits:
                hits.append(hit)

    def _shared(self, hit: KnownHit) -> tuple[int, KnownHit]:
        """(number, hit) of ``hit``, the same objects every time it recurs."""
        return self._numbered.setdefault(hit, (len(self._numbered), hit))

    def _add_word(self, variant: str, hit: KnownHit) -> None:
        word_id = self._word_ids.get(variant)
        if word_id is None:
            word_id = self._word_ids[variant] = len(self.words)
            self.words.append(variant)
            self._word_hits.append(())
        numbered = self._shared(hit)
        if numbered not in self._word_hits[word_id]:
            self._word_hits[word_id] += (numbered,)

    def _share_hits(self, digest_hits: dict[bytes, list[KnownHit]]) -> None:
        """Equal hit lists as one object; digests point at theirs by index."""
        lists: dict[tuple, tuple] = {}
        self._word_hits = [lists.setdefault(hits, hits) for hits in self._word_hits]
        indices: dict[tuple[KnownHit, ...], int] = {}
        for digest, hits in digest_hits.items():
            self.digests[digest] = indices.setdefault(tuple(hits), len(indices))
        self._digest_hit_lists = list(indices)
        del self._numbered

    def _word_matches(self, data: bytes) -> list[tuple[int, int]]:
        """(word id, end offset) of every written form in ``data``, overlapping ones too."""
        if self._words is None:
            return []
        found: list[tuple[int, int]] = []
        self._words.scan(data, _collect, found)
        return found

    def is_word(self, text: str) -> bool:
        """Whether ``text`` is one of the written forms the matcher searches for."""
        return text in self._word_ids

    def hot_ends(self, data: bytes) -> list[int]:
        """End offsets in ``data`` of every written form and known digest, boundaries aside:
        where :meth:`search_joined` could report something."""
        if self.empty:
            return []
        ends = [end for _word, end in self._word_matches(data)]
        if self.digests:
            ends += [end for _start, end, digest, _outer in digest_spans(data)
                     if digest in self.digests]
        return ends

    def may_hold_phone(self, data: bytes) -> bool:
        """False when no known phone number can be written in ``data``, whatever its layout.

        With spaces, brackets, dots and dashes removed, a number in any layout
        shows its national number's digits in a row; this looks for those.
        """
        if self._phone_gate is None:
            return False
        found: list[int] = []

        def on_match(word_id: int, _start: int, _end: int, _flags: int, _context: object) -> bool:
            found.append(word_id)
            return True  # one is enough: stop the scan

        self._phone_gate.scan(data.translate(None, _PHONE_SEPARATORS), on_match)
        return bool(found)

    def phone_ends(self, data: bytes) -> list[int]:
        """End offsets in ``data`` of each known number's national digits, whatever its
        layout: where :meth:`may_hold_phone` found one, back in ``data``."""
        if self._phone_gate is None:
            return []
        squeezed = data.translate(None, _PHONE_SEPARATORS)
        found: list[tuple[int, int]] = []
        self._phone_gate.scan(squeezed, _collect, found)
        if not found or len(squeezed) == len(data):
            return [end for _word, end in found]
        # The k-th separator, at p in data, would sit at p - k in the squeezed bytes: after
        # the bytes of the k + 1 pieces before it (native loops only; a JSON body has hundreds)
        pieces = data.translate(_PHONE_SEPARATORS_AS_SPACE).split(b" ")
        moved = list(accumulate(map(len, pieces[:-1])))
        return [end + bisect_right(moved, end - 1) for _word, end in found]

    def search_joined(self, joined: Joined) -> Iterator[tuple[int, int, int, KnownHit]]:
        """(value index, start, end, hit) for each known value in the values of ``joined``.

        Written forms count on a word boundary; an e-mail address in any case.
        """
        if self.empty:
            return
        data = joined.data
        # A value written several ways at once (``+91 98123 45678`` holds three of the
        # phone's forms) is reported once: the first form that passes its checks.
        reported: set[tuple[int, int]] = set()
        locate = joined.locate if joined.ascii else joined.locate_bytes  # ASCII: bytes = chars
        lengths, hits_of, values = self._lengths, self._word_hits, joined.values
        # (end, hits) of the last match that reported its one hit: the shorter forms of the
        # same value end at the same byte with the same hits (``98123 45678`` after
        # ``+91 98123 45678``), and are passed over without being located
        done_at: tuple[int, tuple[tuple[int, KnownHit], ...]] | None = None
        for word_id, end in self._word_matches(data):
            hits = hits_of[word_id]
            if done_at is not None and done_at[0] == end and done_at[1] is hits:
                continue
            located = locate(end - lengths[word_id], end)
            if located is None:
                continue
            index, first, last = located
            if len(hits) == 1 and (index, hits[0][0]) in reported:
                continue
            text = values[index]
            if not _on_boundary(text, first, last):
                continue
            for number, hit in hits:
                if (index, number) not in reported and _stands_alone(text, first, last, hit):
                    reported.add((index, number))
                    if len(hits) == 1:
                        done_at = (end, hits)
                    yield index, first, last, hit
        if self.digests:
            yield from self._digest_hits(joined, data)

    def _digest_hits(self, joined: Joined, data: bytes) -> Iterator[tuple[int, int, int, KnownHit]]:
        for start, end, digest, outer in digest_spans(data):
            index = self.digests.get(digest)
            located = joined.locate_bytes(start, end) if index is not None else None
            if index is None or located is None:
                continue
            for hit in self._digest_hit_lists[index]:
                yield (*located, self._wrapped(hit, outer) if outer else hit)

    def _wrapped(self, hit: KnownHit, outer: str) -> KnownHit:
        """``hit`` under one more encoding (``base64(sha1)``), made once per hit."""
        slot = (hit, outer)
        wrapped = self._wrapped_hits.get(slot)
        if wrapped is None:
            if len(self._wrapped_hits) > 4096:
                self._wrapped_hits.clear()
            wrapped = self._wrapped_hits[slot] = KnownHit(
                hit.data_type, hit.canonical, f"{outer}({hit.encoding})")
        return wrapped

    def search(self, text: str) -> Iterator[KnownHit]:
        """Each known value found in ``text``: written forms on a word boundary, digests."""
        for _index, _start, _end, hit in self.search_joined(Joined([text])):
            yield hit


_PHONE_SEPARATORS = b" ()./-"
_PHONE_SEPARATORS_AS_SPACE = bytes.maketrans(_PHONE_SEPARATORS, b" " * len(_PHONE_SEPARATORS))
_HYPERSCAN_VERSION = getattr(hyperscan, "__version__", "")


def _collect(word_id: int, _start: int, end: int, _flags: int, found: object) -> None:
    found.append((word_id, end))  # type: ignore[attr-defined]  # the scan's context: a list


def matcher_inputs(data_types: Iterable[DataType], device: DeviceProfile) -> bytes:
    """Everything :class:`KnownMatcher` is built from, and this module's code, as bytes.

    Equal inputs build equal matchers: their SHA-256 names a cached one.
    """
    wanted = [(t.name, list(t.known.fields), list(t.known.transforms))
              for t in data_types if t.known is not None]
    values = {name: device.known(name) for _, fields, _ in wanted for name in fields}
    code = Path(__file__).read_bytes()
    described = json.dumps([wanted, values, device.region, _HYPERSCAN_VERSION],
                           sort_keys=True, default=list)
    return code + b"\0" + described.encode()


def _national_digits(e164: str) -> str:
    try:
        return str(phonenumbers.parse(e164, None).national_number)
    except phonenumbers.NumberParseException:
        return "".join(ch for ch in e164 if ch.isdigit())


def _compile_words(words: list[str]) -> Scanner:
    """One hyperscan database of ``words``; forms of an e-mail address match in any case."""
    encoded = [word.encode("utf-8", "surrogatepass") for word in words]
    flags = [hyperscan.HS_FLAG_CASELESS if _is_address(word) else 0 for word in encoded]
    return Scanner.compile(encoded, range(len(encoded)), flags, literal=True)


def _is_address(word: bytes) -> bool:
    return b"@" in word or b"%40" in word


def _stands_alone(text: str, start: int, end: int, hit: KnownHit) -> bool:
    """The match is this value, not part of a longer one."""
    if hit.whole_value and (text[:start].strip(_QUOTES) or text[end:].strip(_QUOTES)):
        return False
    matched = text[start:end]
    if ("@" in matched or "%40" in matched.upper()) and not _email_boundary(text, start, end):
        return False
    return whole_number(text, start, end, hit)


_QUOTES = " \t\r\n\"'"
_NOT_DIGIT = re.compile(r"\D")
_TIGHT = frozenset("0123456789+()")
_COUNTRY_CODE_BEFORE = re.compile(r"\(?(?:\+|00)(\d{1,3})\)?[\s./-]{0,3}$")


def whole_number(text: str, start: int, end: int, hit: KnownHit) -> bool:
    """False when a phone number's digits are only part of someone else's number.

    ``9812345678`` in ``+9812345678``, ``19812345678`` or ``+44 9812345678`` is
    another number.  Written with ``+`` or ``00``, the number must be the
    device's own E.164 number; written nationally, its digits must be one of
    the known forms, and a country code just before it must be the right one.
    """
    if not hit.phone_digits:
        return True
    while start > 0 and text[start - 1] in _TIGHT:
        start -= 1
    while end < len(text) and text[end] in _TIGHT:
        end += 1
    run = text[start:end].lstrip("(")
    digits = run if run.isdigit() else _NOT_DIGIT.sub("", run)
    own = hit.canonical.lstrip("+")
    if run.startswith("+"):
        return digits == own
    if run.startswith("00") and digits[2:] == own:
        return True
    if digits not in hit.phone_digits:
        return False
    country = _COUNTRY_CODE_BEFORE.search(text, max(0, start - 8), start)
    return country is None or own == country.group(1) + digits.lstrip("0")


def _email_boundary(text: str, start: int, end: int) -> bool:
    """An address inside a longer one (``mary.alice@x.com``, ``alice@x.com.cn``) is not it."""
    before = text[start - 1] if start > 0 else ""
    after = text[end : end + 2]
    if before and (before.isalnum() or before in "._%+-"):
        return False
    return not (after[:1].isalnum() or (after[:1] in ".-" and after[1:2].isalnum()))


def _on_boundary(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    first, last = text[start], text[end - 1]
    if before and before.isalnum() and first.isalnum():
        return False
    return not (after and after.isalnum() and last.isalnum())
