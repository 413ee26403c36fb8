"""Known values of the device, in every form an app may send them.

Each known value (IMEI, own number, contacts' numbers, ...) is expanded into
its written forms (a phone number in E.164 with or without ``+``, national
with or without the trunk 0, with spaces or dashes) in upper and lower case.

- Reversible encodings of those forms (percent-encoding once or twice,
  base64 standard or URL-safe, hex in either case) go into one Aho-Corasick
  automaton, so a leaf is searched for every known value at once, also where
  the value sits inside a longer string.  Deeper reversible chains
  (``url(base64)``...) need no variants: the decoder unwraps them first.
- Hashes (MD5, SHA-1, SHA-256 and chains two deep such as ``sha256(md5)``)
  go into a table keyed by the raw digest.  A leaf's hash-shaped tokens (hex
  in either case, base64 of the raw digest or of its hex) are looked up there,
  so every way of writing a digest costs one table entry, not four words.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import ahocorasick
import phonenumbers

from leakmap.core.decode import base64_bytes
from leakmap.core.device import DeviceProfile
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
# Maximal runs of base64 characters (hex is a subset): every token below lies in one.
_RUN = re.compile(r"[A-Za-z0-9+/_=-]{22,}")
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{32,}")
_HEX_SIZES = (32, 40, 64)
# Base64 of a 16/20/32-byte digest, or of a 32/40/64-character hex digest, has this many
# characters before its padding; no other length can decode to a digest.
_B64_CORES = frozenset({22, 27, 43, 54, 86})


def digest_tokens(text: str) -> Iterator[tuple[bytes, str]]:
    """(raw digest, outer encoding) for each hash-shaped token in ``text``.

    The outer encoding is ``""`` for hex, ``"base64"`` for base64 of the raw
    digest or of its hex.  A hex token is a run of exactly 32, 40 or 64 hex
    digits; a base64 token is the last ``=``-separated part of a run of
    base64 characters, with at most two ``=`` of padding.
    """
    for run_match in _RUN.finditer(text):
        run = run_match.group()
        for hex_match in _HEX_RUN.finditer(run):
            if len(hex_match.group()) in _HEX_SIZES:
                yield bytes.fromhex(hex_match.group()), ""
        yield from _base64_digest(run)


def _base64_digest(run: str) -> Iterator[tuple[bytes, str]]:
    core = run.rstrip("=")
    if len(run) - len(core) > 2:
        return
    core = core.rsplit("=", 1)[-1]
    if len(core) not in _B64_CORES:
        return
    raw = base64_bytes(core)
    if raw is None:
        return
    if len(raw) in _DIGEST_SIZES:
        yield raw, "base64"
    elif len(raw) in _HEX_SIZES and _HEX_RUN.fullmatch(raw.decode("latin-1")):
        yield bytes.fromhex(raw.decode("ascii")), "base64"


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
    """Every known value: an automaton for written forms, a table for digests."""

    def __init__(self, data_types: Iterable[DataType], device: DeviceProfile) -> None:
        self.automaton = ahocorasick.Automaton()
        self.digests: dict[bytes, list[KnownHit]] = {}
        self.known_phones: dict[str, list[KnownHit]] = {}
        for data_type in data_types:
            if data_type.known is None:
                continue
            for field_name in data_type.known.fields:
                for value in device.known(field_name):
                    self._add(data_type, field_name, value, device.region)
        self.empty = len(self.automaton) == 0 and not self.digests
        if len(self.automaton):
            self.automaton.make_automaton()

    def _add(self, data_type: DataType, field_name: str, value: str, region: str | None) -> None:
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
            hits = self.digests.setdefault(digest, [])
            hit = KnownHit(data_type.name, canonical, encoding)
            if hit not in hits:
                hits.append(hit)

    def _add_word(self, variant: str, hit: KnownHit) -> None:
        existing = self.automaton.get(variant, None)
        if existing is None:
            self.automaton.add_word(variant, (len(variant), [hit]))
        elif hit not in existing[1]:
            existing[1].append(hit)

    def _written_forms(self, text: str) -> Iterator[KnownHit]:
        for end_index, (length, hits) in self.automaton.iter(text):
            start, end = end_index + 1 - length, end_index + 1
            if _on_boundary(text, start, end):
                yield from (h for h in hits if _stands_alone(text, start, end, h))

    def search(self, text: str) -> Iterator[KnownHit]:
        """Each known value found in ``text``: written forms on a word boundary, digests."""
        if self.empty:
            return
        if len(self.automaton):
            yield from self._written_forms(text)
            if "@" in text and text.isascii() and text != text.lower():
                yield from self._written_forms(text.lower())  # e-mail addresses ignore case
        if self.digests:
            for digest, outer in digest_tokens(text):
                for hit in self.digests.get(digest, ()):
                    encoding = f"{outer}({hit.encoding})" if outer else hit.encoding
                    yield KnownHit(hit.data_type, hit.canonical, encoding)


def _stands_alone(text: str, start: int, end: int, hit: KnownHit) -> bool:
    """The match is this value, not part of a longer one."""
    if hit.whole_value and (text[:start].strip(_QUOTES) or text[end:].strip(_QUOTES)):
        return False
    matched = text[start:end]
    if ("@" in matched or "%40" in matched.upper()) and not _email_boundary(text, start, end):
        return False
    return whole_number(text, start, end, hit)


_QUOTES = " \t\r\n\"'"
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
    digits = "".join(ch for ch in run if ch.isdigit())
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
