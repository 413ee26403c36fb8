"""Known values of the device, in every form an app may send them.

Each known value (IMEI, own number, contacts' numbers, ...) is expanded into
its written forms (a phone number in E.164 with or without ``+``, national
with or without the trunk 0, with spaces or dashes; upper and lower case) and
then into the transforms apps apply: percent-encoding, base64, hex, MD5,
SHA-1, SHA-256 (hex in either case or base64 of the raw digest), and chains
two deep such as ``sha256(md5)`` or ``base64(sha1)``.  All variants go into
one Aho-Corasick automaton, so a leaf is searched for every known value at
once.  Reversible chains (``url(base64)``...) need no variants: the decoder
unwraps them before the search.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import ahocorasick
import phonenumbers

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


def phone_forms(number: str, region: str | None) -> tuple[list[str], list[str]]:
    """(written forms, canonical forms to hash) of a phone number."""
    text = number.strip()
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return [text], [text]
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    national_digits = str(parsed.national_number)
    national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    international = phonenumbers.format_number(
        parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    trunk = "".join(ch for ch in national if ch.isdigit())
    canonical = [e164, e164[1:], national_digits, trunk]
    written = [*canonical, "00" + e164[1:], national, international, text]
    written += [form.replace(" ", "-") for form in (national, international)]
    written += [form.replace(" ", "") for form in (national, international)]
    return _unique(written), _unique(canonical)


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


def _case_forms(value: str, transforms: tuple[str, ...]) -> list[tuple[str, str]]:
    forms = [(value, "")]
    if "upper" in transforms or "lower" in transforms:
        forms += [(value.upper(), "upper"), (value.lower(), "lower")]
    unique: dict[str, str] = {}
    for text, label in forms:
        unique.setdefault(text, label)
    return list(unique.items())


def _wrap(outer: str, inner: str) -> str:
    return f"{outer}({inner})" if inner else outer


def _b64(raw: bytes) -> Iterator[str]:
    yield base64.b64encode(raw).decode().rstrip("=")
    yield base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _digests(text: str, label: str, allowed: set[str]) -> Iterator[tuple[str, str, str]]:
    """(variant, encoding, lower-hex digest) for each hash of ``text``."""
    for name in _HASHES:
        if name not in allowed:
            continue
        digest = hashlib.new(name, text.encode()).digest()
        hexed = digest.hex()
        encoding = _wrap(name, label)
        yield hexed, encoding, hexed
        yield hexed.upper(), encoding, hexed
        for encoded in _b64(digest):
            yield encoded, _wrap("base64", encoding), hexed


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


def variants(
    written: list[str], hashed: list[str], transforms: tuple[str, ...]
) -> Iterator[tuple[str, str]]:
    """(variant, encoding) pairs for one known value."""
    allowed = {step for chain in transforms for step in chain.replace(")", "").split("(")}
    for form in written:
        for text, label in _case_forms(form, transforms):
            yield text, label or "plain"
            yield from _reversible(text, label, allowed)
    for form in hashed:
        for text, label in _case_forms(form, transforms):
            for variant, encoding, hexed in _digests(text, label, allowed):
                yield variant, encoding
                yield from ((v, e) for v, e, _ in _digests(hexed, encoding, allowed))
                if "base64" in allowed and not encoding.startswith("base64"):
                    for wrapped in _b64(hexed.encode()):
                        yield wrapped, _wrap("base64", encoding)


def _forms(data_type_field: str, value: str, region: str | None) -> tuple[list[str], list[str]]:
    if data_type_field in PHONE_FIELDS:
        return phone_forms(value, region)
    if data_type_field == "mac_address":
        forms = _mac_forms(value)
        return forms, forms
    return [value], [value]


class KnownMatcher:
    """One automaton over every variant of every known value."""

    def __init__(self, data_types: Iterable[DataType], device: DeviceProfile) -> None:
        self.automaton = ahocorasick.Automaton()
        self.known_phones: dict[str, list[tuple[str, str]]] = {}
        for data_type in data_types:
            if data_type.known is None:
                continue
            for field_name in data_type.known.fields:
                for value in device.known(field_name):
                    self._add(data_type, field_name, value, device.region)
        self.empty = len(self.automaton) == 0
        if not self.empty:
            self.automaton.make_automaton()

    def _add(self, data_type: DataType, field_name: str, value: str, region: str | None) -> None:
        assert data_type.known is not None
        canonical = canonical_phone(value, region) if field_name in PHONE_FIELDS else value
        if field_name in PHONE_FIELDS:
            self.known_phones.setdefault(canonical, []).append((data_type.name, canonical))
        written, hashed = _forms(field_name, value, region)
        minimum = 3 if field_name == "carrier" else _MIN_VARIANT
        for variant, encoding in variants(written, hashed, data_type.known.transforms):
            if len(variant) < (minimum if encoding == "plain" else _MIN_VARIANT):
                continue
            hit = KnownHit(data_type.name, canonical, encoding)
            existing = self.automaton.get(variant, None)
            if existing is None:
                self.automaton.add_word(variant, (len(variant), [hit]))
            elif hit not in existing[1]:
                existing[1].append(hit)

    def search(self, text: str) -> Iterator[tuple[int, int, KnownHit]]:
        """(start, end, hit) for each variant found in ``text`` on a word boundary."""
        if self.empty:
            return
        for end_index, (length, hits) in self.automaton.iter(text):
            start, end = end_index + 1 - length, end_index + 1
            if _on_boundary(text, start, end):
                for hit in hits:
                    yield start, end, hit


def _on_boundary(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    first, last = text[start], text[end - 1]
    if before and before.isalnum() and first.isalnum():
        return False
    return not (after and after.isalnum() and last.isalnum())
