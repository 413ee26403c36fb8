"""Classification: which personal data a flow carries, and where it sat.

:class:`Classifier` is built once from a policy and a device profile and then
called on every :class:`Exchange`.  It is what the live addon, ``leakmap
analyze`` and the tests all call, so they cannot disagree.

One finding per (field, data type); when several detectors agree the
strongest ``match`` wins: ``known`` > ``pattern`` > ``key``.

A flow gets ``limits.budget_ms`` of wall-clock time, decoding included.
Known values (the device's own IMEI...) are looked for in each value as soon
as it is decoded; the other detectors then run one pass each over all the
values, cheapest and surest first, and location pairs last.  The clock is
read between two values: a flow that runs out keeps what was found and says
so in its errors.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import field as dataclass_field

import phonenumbers

from leakmap.core.decode import Collector, Leaf, Limits, exchange_leaves
from leakmap.core.device import DeviceProfile
from leakmap.core.exchange import Exchange
from leakmap.core.known import KnownMatcher, whole_number
from leakmap.core.safe_regex import FullmatchIndex
from leakmap.core.validators import VALIDATORS, parse_phone
from leakmap.policies.model import DataType, Policy

MATCH_STRENGTH = {"known": 3, "pattern": 2, "key": 1}
_COORDINATE = re.compile(r"(?<![\d.])-?\d{1,3}\.\d{2,}(?![\d.])")
_LOCATION_RADIUS_KM = 1.0
_MAX_COORDINATES = 40  # numbers paired within one value
# siblings paired with the next few: lat and lon sit close, and a group of 10,000
# numbers must not make 50 million pairs
_PAIR_WINDOW = 8
# a run of 7 to 20 digits, possibly with + or 00, brackets, spaces, dots or dashes
_PHONE_SPAN = re.compile(r"(?<![\w+])(?:\+|\(\+?)?\d[\d ()./-]{5,22}\d(?![\w])")


@dataclass(frozen=True)
class Finding:
    field: str
    data_type: str
    category: str
    severity: str
    encoding: str
    match: str
    value: str
    # how many encodings the decoder undid before the match; among equal
    # matches the most decoded view of a value is the most precise one
    decoded_layers: int = dataclass_field(default=0, compare=False)


@dataclass
class Analysis:
    findings: list[Finding] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    truncated: bool = False


def encoding_chain(layers: tuple[str, ...], inner: str) -> str:
    """``layers`` (outermost first) around ``inner``: ``url(base64)``, ``sha256(md5)``."""
    result = "" if inner == "plain" else inner
    for layer in reversed(layers):
        result = f"{layer}({result})" if result else layer
    return result or "plain"


def _distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(
        (lon2 - lon1) / 2
    ) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(h)))


def _coordinates(text: str) -> list[float]:
    return [float(number) for number in _COORDINATE.findall(text)]


def _is_latlon(pair: tuple[float, float]) -> bool:
    return -90 <= pair[0] <= 90 and -180 <= pair[1] <= 180 and pair != (0.0, 0.0)


class Classifier:
    """The policy and the device, ready to classify flows."""

    def __init__(self, policy: Policy, device: DeviceProfile, limits: Limits | None = None):
        self.policy = policy
        self.device = device
        self.limits = limits or Limits()
        types = list(policy.data_types.values())
        self.known = KnownMatcher(types, device)
        self._phone_tails = _phone_tails(self.known.known_phones)
        self.pattern_types = [t for t in types if t.pattern is not None]
        self.key_types = [t for t in types if t.keys is not None and not self._is_location(t)]
        self.location_types = [t for t in types if self._is_location(t)]
        self._key_names = FullmatchIndex([t.keys.names if t.keys else () for t in self.key_types])
        self._key_cache: dict[str, list[DataType]] = {}

    @staticmethod
    def _is_location(data_type: DataType) -> bool:
        by_known = data_type.known is not None and "location" in data_type.known.fields
        by_keys = (
            data_type.keys is not None
            and data_type.keys.value is not None
            and data_type.keys.value.validator == "latlon"
        )
        return by_known or by_keys

    def _finding(self, data_type: str, leaf: Leaf, inner: str, match: str, value: str) -> Finding:
        spec = self.policy.data_types[data_type]
        return Finding(
            field=leaf.path,
            data_type=data_type,
            category=spec.category,
            severity=spec.severity,
            encoding=encoding_chain(leaf.layers, inner),
            match=match,
            value=value,
            decoded_layers=len(leaf.layers),
        )

    # -- detectors, each yielding candidate findings for one leaf ----------

    def _known_hits(self, leaf: Leaf) -> Iterator[Finding]:
        for hit in self.known.search(leaf.value):
            yield self._finding(hit.data_type, leaf, hit.encoding, "known", hit.canonical)

    def _known_phone_numbers(self, leaf: Leaf) -> Iterator[Finding]:
        """Known numbers in layouts the automaton has no word for: brackets, dots...

        Only digit runs shaped like a phone number are parsed, one by one: cheaper
        than the library's matcher over whole values such as a User-Agent.
        """
        text = leaf.value[:4096]
        for span in _PHONE_SPAN.finditer(text):
            if not _may_be_known(span.group(), self._phone_tails):
                continue  # its last digits are no known number's: not worth parsing
            number = parse_phone(span.group(), self.device.region)
            if number is None:
                continue
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            for hit in self.known.known_phones.get(e164, []):
                if hit.whole_value and span.group() != text.strip():
                    continue
                if whole_number(text, span.start(), span.end(), hit):
                    yield self._finding(hit.data_type, leaf, "plain", "known", hit.canonical)

    def _pattern_hits(self, leaf: Leaf) -> Iterator[Finding]:
        for data_type in self.pattern_types:
            assert data_type.pattern is not None and data_type.pattern.regex is not None
            check = VALIDATORS.get(data_type.pattern.validator or "nonempty")
            for match in data_type.pattern.regex.finditer(leaf.value):
                text = match.group()
                if text.strip() and (check is None or check(text, self.device.region)):
                    yield self._finding(data_type.name, leaf, "plain", "pattern", text)

    def _key_hits(self, leaf: Leaf) -> Iterator[Finding]:
        if not leaf.key:
            return
        value = leaf.value.strip()
        if not value:
            return
        for data_type in self._types_for_key(leaf.key):
            if self._value_passes(data_type, value):
                yield self._finding(data_type.name, leaf, "plain", "key", value)

    def _types_for_key(self, key: str) -> list[DataType]:
        """Data types whose key names match ``key``; field names repeat, so remembered."""
        types = self._key_cache.get(key)
        if types is None:
            if len(self._key_cache) > 20_000:
                self._key_cache.clear()
            matched = self._key_names(key)  # one pass for every data type's names
            types = [t for index, t in enumerate(self.key_types) if index in matched]
            self._key_cache[key] = types
        return types

    def _value_passes(self, data_type: DataType, value: str) -> bool:
        assert data_type.keys is not None
        rule = data_type.keys.value
        regex = rule.regex if rule else None
        validator = rule.validator if rule and rule.validator else None
        if validator is None and data_type.pattern is not None:
            validator = data_type.pattern.validator
        if regex is not None and not regex.fullmatch(value):
            return False
        check = VALIDATORS.get(validator) if validator else None
        return check is None or check(value, self.device.region)

    # -- location: pairs of coordinates, matched by distance --------------

    def _location_hits(self, leaves: list[Leaf], late: Callable[[], bool]) -> Iterator[Finding]:
        """Coordinate pairs: two numbers in one value, or two sibling values."""
        if not self.location_types:
            return
        siblings: dict[tuple[str | None, tuple[str, ...]], list[tuple[Leaf, float]]] = {}
        for leaf in leaves:
            if late():
                return
            numbers = _coordinates(leaf.value)
            if len(numbers) >= 2:
                for pair in itertools.pairwise(numbers[:_MAX_COORDINATES]):
                    yield from self._located(leaf, pair, (leaf.key,))
            elif len(numbers) == 1 and leaf.parent is not None:
                siblings.setdefault((leaf.parent, leaf.layers), []).append((leaf, numbers[0]))
        for group in siblings.values():
            # any two siblings: other numbers (a timestamp, an accuracy) may sit between
            for index, (leaf_a, a) in enumerate(group):
                if late():
                    return
                for leaf_b, b in group[index + 1 : index + 1 + _PAIR_WINDOW]:
                    yield from self._located(leaf_a, (a, b), (leaf_a.key, leaf_b.key))

    def _located(
        self, leaf: Leaf, pair: tuple[float, float], keys: tuple[str | None, ...]
    ) -> Iterator[Finding]:
        """``known`` within 1 km of the profile's location (either order); ``key``
        when every value sits under a location-like name."""
        text = f"{pair[0]},{pair[1]}"
        for data_type in self.location_types:
            if self.device.location is not None and any(
                _is_latlon(c) and _distance_km(c, self.device.location) <= _LOCATION_RADIUS_KM
                for c in (pair, (pair[1], pair[0]))
            ):
                yield self._finding(data_type.name, leaf, "plain", "known", text)
            elif (
                _is_latlon(pair)
                and data_type.keys is not None
                and all(k and data_type.keys.matches(k) for k in keys)
            ):
                yield self._finding(data_type.name, leaf, "plain", "key", text)

    # -- the whole flow ----------------------------------------------------

    def classify(self, exchange: Exchange) -> Analysis:
        """Findings and analysis problems for one flow.  Never raises.

        Within ``limits.budget_ms`` (0: no limit); see the module's docstring.
        """
        budget = self.limits.budget_ms
        deadline = time.monotonic() + budget / 1000 if budget > 0 else None
        best: dict[tuple[str, str], Finding] = {}
        problems: list[str] = []  # the known-value pass's, listed after the decoder's

        def keep(candidates: list[Finding]) -> None:
            for candidate in candidates:
                slot = (candidate.field, candidate.data_type)
                if _stronger(candidate, best.get(slot)):
                    best[slot] = candidate

        def known_now(leaf: Leaf) -> None:  # while decoding: each value as it comes
            keep(self._detected(self._known_hits, leaf, problems))

        collector = exchange_leaves(exchange, self.limits, deadline, known_now)
        analysis = Analysis(errors=collector.errors)
        analysis.errors.extend(problems)
        try:
            self._detect(collector, keep, analysis.errors)
        except Exception as e:  # the location pass; findings so far are kept
            analysis.errors.append(f"classifier error: {type(e).__name__}: {e}")
        analysis.truncated = collector.truncated
        findings = _explained(list(best.values()), self.device.region)
        analysis.findings = sorted(findings, key=lambda f: (f.field, f.data_type))
        return analysis

    def _detect(self, collector: Collector, keep: Callable[[list[Finding]], None],
                errors: list[str]) -> None:
        """The detectors after decoding, one pass each, until the clock runs out."""
        leaves = collector.leaves
        passes = [self._key_hits, self._pattern_hits]
        if self.known.known_phones:
            passes.insert(0, self._known_phone_numbers)
        for detector in passes:
            for leaf in leaves:
                if collector.expired():
                    return
                keep(self._detected(detector, leaf, errors))
        for finding in self._location_hits(leaves, collector.expired):
            keep([finding])

    @staticmethod
    def _detected(detector: Callable[[Leaf], Iterator[Finding]], leaf: Leaf,
                  errors: list[str]) -> list[Finding]:
        """What ``detector`` finds in ``leaf``; a failure costs this leaf, not the flow."""
        try:
            return [*detector(leaf)]
        except Exception as e:  # hostile values must not end the analysis
            errors.append(f"classifier error at {leaf.path}: {type(e).__name__}: {e}")
            return []


def _layers(encoding: str) -> int:
    return 0 if encoding == "plain" else encoding.count("(") + 1


def _stronger(candidate: Finding, current: Finding | None) -> bool:
    if current is None:
        return True
    mine, theirs = MATCH_STRENGTH[candidate.match], MATCH_STRENGTH[current.match]
    if mine != theirs:
        return mine > theirs
    if candidate.decoded_layers != current.decoded_layers:
        return candidate.decoded_layers > current.decoded_layers
    return _layers(candidate.encoding) < _layers(current.encoding)


def _explained(findings: list[Finding], region: str | None) -> list[Finding]:
    """Drop shape or key guesses for a value that a known finding already names.

    A contact's number is a ``contact`` (known); that it also looks like a
    phone number adds nothing.
    """
    guessed = {f.field for f in findings if f.match != "known"}  # most fields have none
    known = {
        (f.field, _normal(f.value, region))
        for f in findings
        if f.match == "known" and f.field in guessed
    }
    explained_fields = {field_path for field_path, _ in known}
    return [
        f for f in findings
        if f.match == "known"
        or f.field not in explained_fields
        or (f.field, _normal(f.value, region)) not in known
    ]


def _normal(value: str, region: str | None) -> str:
    phone = parse_phone(value, region)
    if phone is not None:
        return phonenumbers.format_number(phone, phonenumbers.PhoneNumberFormat.E164)
    return "".join(ch for ch in value.lower() if ch.isalnum())


_TAIL = 6  # digits compared before a span is parsed as a phone number


def _phone_tails(known_phones: dict[str, object]) -> dict[int, frozenset[str]]:
    """The last digits of each known number's national number, by how many there are.

    A digit run can only be a known number if it ends with that number's
    national (significant) number, so runs that end otherwise skip the parse.
    """
    tails: dict[int, set[str]] = {}
    for e164 in known_phones:
        try:
            national = str(phonenumbers.parse(e164, None).national_number)
        except phonenumbers.NumberParseException:
            national = "".join(ch for ch in e164 if ch.isdigit())
        size = min(_TAIL, len(national))
        tails.setdefault(size, set()).add(national[-size:])
    return {size: frozenset(values) for size, values in tails.items()}


def _may_be_known(span: str, tails: dict[int, frozenset[str]]) -> bool:
    digits = "".join(ch for ch in span if ch.isdigit())
    return any(digits[-size:] in values for size, values in tails.items())
