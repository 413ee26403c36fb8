"""Classification: which personal data a flow carries, and where it sat.

:class:`Classifier` is built once from a policy and a device profile and then
called on every :class:`Exchange`.  It is what the live addon, ``leakmap
analyze`` and the tests all call, so they cannot disagree.

One finding per (field, data type); when several detectors agree the
strongest ``match`` wins: ``known`` > ``pattern`` > ``key``.

A flow gets ``limits.budget_ms`` of wall-clock time, decoding included.
Known values (the device's own IMEI...) are looked for while decoding goes
on, in batches of 64 kB of values, and in the last batch even after the
deadline.  The other detectors then run one pass each, cheapest and surest
first, and location pairs last, over chunks of about 4 kB of values joined
into one text (core/joined.py): one regex or hyperscan call covers many
values, and the clock is read between two chunks.  A flow that runs out keeps
what was found and says so in its errors.

Gates keep the Python regexes away from most values: the policy patterns'
loosened forms run in one hyperscan scan (core/pattern_gate.py), and phone
numbers in odd layouts are parsed only where a known number's digits occur.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from dataclasses import field as dataclass_field
from functools import lru_cache, partial
from itertools import islice
from urllib.parse import unquote_plus

import phonenumbers

from leakmap.core.decode import (
    FORM_PAIR,
    Collector,
    Leaf,
    Limits,
    _windows,
    exchange_leaves,
    names_that_may_be_values,
    plain_value,
    unwrapped,
    unwrapping,
)
from leakmap.core.device import DeviceProfile
from leakmap.core.exchange import Exchange
from leakmap.core.joined import Joined
from leakmap.core.known import KnownMatcher, whole_number
from leakmap.core.pattern_gate import KeyGate, PatternGate
from leakmap.core.safe_regex import FullmatchIndex, scans_joined
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
# The other detectors take values in chunks of about this many characters: few calls
# for a flow of small values, and a look at the clock between two chunks.
_DETECT_CHUNK_CHARS = 4096
# Chunks each detector reads even once the flow's time is up (Classifier._detect)
_GRACE_CHUNKS = 4
# windows of the unread rest where a type's loosened form matched, searched before that type
# is given up (see Classifier._patterns_unread)
_UNREAD_WINDOWS = 1000
# How many quiet URL paths and header values a classifier remembers (Classifier._remember_quiet)
_QUIET_MEMORY = 4096
# A JSON body up to this size may be found to hold nothing and not be walked: it
# cannot reach the leaf budget, and its raw scans stay within a few microseconds.
_QUIET_MAX_BYTES = 16 * 1024
# Where a JSON value holds something that decodes into something else
_DECODES_FURTHER = re.compile(r"[\\%&]")
# The same in a form's values, decoded once already: percent-encoding again, a document
_FORM_DECODES_FURTHER = re.compile(r"[%{\[]")
# Base64 of a JSON object, in longer text too ("Bearer eyJ..."): a token, followed
_TOKEN_START = re.compile("eyJ")
_DATA_URL = re.compile(";base64,")


@lru_cache(maxsize=4)
def _blob_strings(min_blob: int) -> re.Pattern[str]:
    """JSON strings that might be base64 or hex (core/decode.py: _decode_once), with their text."""
    return re.compile(rf'"([A-Za-z0-9+/=_-]{{{min_blob},}})"')


@lru_cache(maxsize=4)
def _blob_values(min_blob: int) -> re.Pattern[str]:
    """Form values (joined by NUL, with NUL before and after) that might be base64 or hex."""
    return re.compile(rf"\x00([A-Za-z0-9+/=_\r\n-]{{{min_blob},}})(?=\x00)")


# Not frozen: a frozen dataclass is built through object.__setattr__, four times slower,
# and a flow makes dozens of candidate findings.  Nothing changes one once made.
@dataclass(slots=True, unsafe_hash=True)
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
    """``layers`` (outermost first) around ``inner``: ``url(base64)``, ``sha256(md5)``.

    A run of four or more of the same layer is written once with its count
    (``base64*40``): a value wrapped 40 times still fits its column."""
    result = "" if inner == "plain" else inner
    runs = [(layer, len(list(run))) for layer, run in itertools.groupby(layers)]
    for layer, count in reversed(runs):
        if count >= _COUNTED_RUN:
            named = f"{layer}*{count}"
            result = f"{named}({result})" if result else named
            continue
        for _ in range(count):
            result = f"{layer}({result})" if result else layer
    return result or "plain"


_COUNTED_RUN = 4


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

    def __init__(self, policy: Policy, device: DeviceProfile, limits: Limits | None = None,
                 known: KnownMatcher | None = None):
        """``known``: the matcher for this policy and device, if already built (a cache)."""
        self.policy = policy
        self.device = device
        self.limits = limits or Limits()
        types = list(policy.data_types.values())
        self.known = known if known is not None else KnownMatcher(types, device)
        self._phone_tails = _phone_tails(self.known.known_phones)
        self.pattern_types = [t for t in types
                              if t.pattern is not None and t.pattern.regex is not None]
        regexes = [t.pattern.regex for t in self.pattern_types if t.pattern and t.pattern.regex]
        self._joinable = {t.name for t, regex in zip(self.pattern_types, regexes, strict=True)
                          if scans_joined(regex)}
        self._gate = PatternGate(regexes)  # its indices are those of pattern_types
        self._key_gate = KeyGate([name for t in types if t.keys is not None for name in t.keys.names])
        self.key_types = [t for t in types if t.keys is not None and not self._is_location(t)]
        self.location_types = [t for t in types if self._is_location(t)]
        self._key_names = FullmatchIndex([t.keys.names if t.keys else () for t in self.key_types])
        self._key_cache: dict[str, list[DataType]] = {}
        self._location_key_cache: dict[tuple[str, str], bool] = {}
        self._validated: dict[tuple[str, str], bool] = {}
        self._passed: dict[tuple[str, str], bool] = {}  # (data type, value): its key value rule
        # (path, value) of URL paths and headers that held nothing (see _remember_quiet)
        self._known_quiet: dict[tuple[str, str], None] = {}

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

    def _known_batch(self, leaves: list[Leaf], errors: list[str],
                     whole: set[tuple[str, str]] | None = None) -> list[Finding]:
        """Known values in ``leaves``, one matcher call for all of them.  The (path, value) of
        each leaf that is one written form and nothing else goes into ``whole``: a key
        rule's finding there would be that same value (see :meth:`_keys_in`)."""
        try:
            joined = Joined([leaf.value for leaf in leaves])
            found = []
            for index, start, end, hit in self.known.search_joined(joined):
                leaf = leaves[index]
                found.append(self._finding(hit.data_type, leaf, hit.encoding, "known",
                                           hit.canonical))
                if (whole is not None and hit.encoding == "plain"
                        and not leaf.value[:start].strip() and not leaf.value[end:].strip()):
                    whole.add((leaf.path, leaf.value))
            return found
        except Exception:  # find the value that breaks it; the others still count
            return [f for leaf in leaves for f in self._detected(self._known_hits, leaf, errors)]

    def _known_phone_numbers(self, leaves: list[Leaf], joined: Joined,
                             errors: list[str]) -> Iterator[Finding]:
        """Known numbers in layouts the matcher has no word for: brackets, dots...

        Only digit runs shaped like a phone number, and ending like a known one,
        are parsed, one by one: cheaper than the library's matcher over whole
        values such as a User-Agent.
        """
        if not self.known.may_hold_phone(joined.data):
            return
        for span in _PHONE_SPAN.finditer(joined.text):
            written = span.group()
            if written.lstrip("+").isdigit() or self.known.is_word(written):
                continue  # digits alone, or a layout the matcher knows: found there already
            if not _may_be_known(written, self._phone_tails):
                continue  # its last digits are no known number's: not worth parsing
            located = joined.locate(span.start(), span.end())
            if located is None:
                continue
            index, start, end = located
            phone = partial(self._known_phone, span=written, start=start, end=end)
            yield from self._detected(phone, leaves[index], errors)

    def _known_phone(self, leaf: Leaf, span: str, start: int, end: int) -> Iterator[Finding]:
        number = parse_phone(span, self.device.region)
        if number is None:
            return
        text = leaf.value
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        for hit in self.known.known_phones.get(e164, []):
            if hit.whole_value and span != text.strip():
                continue
            if whole_number(text, start, end, hit):
                yield self._finding(hit.data_type, leaf, "plain", "known", hit.canonical)

    def _pattern_batch(self, leaves: list[Leaf], joined: Joined,
                       errors: list[str]) -> Iterator[Finding]:
        """Shape patterns: each regex once over all values, then again only where it matched.

        A pattern that cannot run over joined values (``scans_joined``) runs on each.
        """
        for data_type, where in self._pattern_places(leaves, joined):
            for index in where:
                yield from self._detected(partial(self._pattern_in, data_type), leaves[index],
                                          errors)

    def _pattern_places(self, leaves: list[Leaf], joined: Joined
                        ) -> Iterator[tuple[DataType, list[int]]]:
        """Each pattern type, with the indices of ``leaves`` where it may match: where the
        gate saw its loosened form end, else where its regex matches over the joined
        values, else all of them."""
        candidates = self._gate.candidates(joined)
        for type_index, data_type in enumerate(self.pattern_types):
            assert data_type.pattern is not None and data_type.pattern.regex is not None
            if candidates is not None and type_index in self._gate.covered:
                yield data_type, sorted(candidates.get(type_index, ()))  # its loose form ended
            elif data_type.name in self._joinable:
                yield data_type, sorted({index for match in data_type.pattern.regex.finditer(
                    joined.text) for index in joined.indices(*match.span())})
            else:
                yield data_type, list(range(len(leaves)))

    def _pattern_in(self, data_type: DataType, leaf: Leaf) -> Iterator[Finding]:
        assert data_type.pattern is not None and data_type.pattern.regex is not None
        validator = data_type.pattern.validator or "nonempty"
        for match in data_type.pattern.regex.finditer(leaf.value):
            text = match.group()
            if text.strip() and self._valid(validator, text):
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
        """Whether ``value``, under a name of ``data_type``'s keys, passes its value rule.

        Remembered, like validators: the values under such names (an IMEI, the
        contacts) come back flow after flow, and a regex call through RE2 costs
        microseconds.
        """
        return _remembered(self._passed, (data_type.name, value),
                           lambda: self._value_rule(data_type, value))

    def _value_rule(self, data_type: DataType, value: str) -> bool:
        assert data_type.keys is not None
        rule = data_type.keys.value
        regex = rule.regex if rule else None
        validator = rule.validator if rule and rule.validator else None
        if validator is None and data_type.pattern is not None:
            validator = data_type.pattern.validator
        if regex is not None and not regex.fullmatch(value):
            return False
        return validator is None or self._valid(validator, value)

    def _valid(self, validator: str, value: str) -> bool:
        """``VALIDATORS[validator]`` of ``value``, remembered: a phone number's parse takes
        about 100 us, and the same numbers come back flow after flow."""
        check = VALIDATORS.get(validator)
        if check is None:
            return True
        return _remembered(self._validated, (validator, value),
                           lambda: check(value, self.device.region))

    # -- location: pairs of coordinates, matched by distance --------------

    def _location_hits(self, chunks: list[tuple[list[Leaf], Joined]],
                       late: Callable[[], bool]) -> Iterator[Finding]:
        """Coordinate pairs: two numbers in one value, or two sibling values."""
        if not self.location_types:
            return
        siblings: dict[tuple[str | None, tuple[str, ...]], list[tuple[Leaf, float]]] = {}
        for leaves, joined in chunks:
            if late():
                return
            if self.device.location is None:  # only values under a location-like name count
                named = [leaf for leaf in leaves if self._location_key(leaf.key)]
                yield from self._coordinate_leaves(named, siblings)
                continue
            with_numbers = sorted({joined.indices(*m.span())[0]
                                   for m in _COORDINATE.finditer(joined.text)})
            yield from self._coordinate_leaves([leaves[i] for i in with_numbers], siblings)
        for group in siblings.values():
            # any two siblings: other numbers (a timestamp, an accuracy) may sit between
            for index, (leaf_a, a) in enumerate(group):
                if late():
                    return
                for leaf_b, b in group[index + 1 : index + 1 + _PAIR_WINDOW]:
                    yield from self._located(leaf_a, (a, b), (leaf_a.key, leaf_b.key))

    def _coordinate_leaves(
        self, leaves: list[Leaf],
        siblings: dict[tuple[str | None, tuple[str, ...]], list[tuple[Leaf, float]]],
    ) -> Iterator[Finding]:
        """Pairs within each of ``leaves``; single numbers go to ``siblings`` to be paired."""
        for leaf in leaves:
            numbers = _coordinates(leaf.value)
            if len(numbers) >= 2:
                for pair in itertools.pairwise(numbers[:_MAX_COORDINATES]):
                    yield from self._located(leaf, pair, (leaf.key,))
            elif len(numbers) == 1 and leaf.parent is not None:
                siblings.setdefault((leaf.parent, leaf.layers), []).append((leaf, numbers[0]))

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
            elif _is_latlon(pair) and all(self._location_key(k, data_type) for k in keys):
                yield self._finding(data_type.name, leaf, "plain", "key", text)

    def _location_key(self, key: str | None, data_type: DataType | None = None) -> bool:
        """Whether ``key`` names a coordinate for ``data_type`` (None: any location type)."""
        if not key:
            return False
        slot = (data_type.name if data_type is not None else "", key)  # "": any type
        named = self._location_key_cache.get(slot)
        if named is None:
            if len(self._location_key_cache) > 20_000:
                self._location_key_cache.clear()
            if data_type is None:
                named = any(self._location_key(key, t) for t in self.location_types)
            else:
                named = data_type.keys is not None and data_type.keys.matches(key)
            self._location_key_cache[slot] = named
        return named

    # -- a body is walked only where something might be found ----------------

    def _json_hot(self, body: bytes) -> list[int] | None:
        """Where in the JSON document ``body`` a detector might find something.

        Walking a document costs a Python call per value; these are native
        scans of the raw bytes, each a superset of what its detector finds in
        a value, and each reporting a place inside that value's span (or its
        name's): the end of any written form or digest of a known value, of a
        policy pattern's loosened form, of a key some data type is named by
        (location names included), of a string that might be base64 or hex
        and decodes, of a run shaped like a phone number that ends like a
        known one (its national digits); and every ``\\``, ``%`` and ``&`` (a value that decodes
        into something else).  Only the parts holding one are walked
        (core/decode.py: walk_hot_json).

        Sorted character offsets; [] when the document holds nothing, None
        when the gates cannot tell: a long or deeply nested document, a device
        with a location (any two numbers may be it), a pattern or key name the
        gates cannot cover, a flood of matches.
        """
        if (len(body) > _QUIET_MAX_BYTES or self.device.location is not None
                or not self._key_gate.complete
                or len(self._gate.covered) < len(self.pattern_types)
                or len(body) > self.limits.max_parsed_values
                or body.count(b"{") + body.count(b"[") >= self.limits.max_structure_depth):
            return None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        pattern_ends, key_ends = self._gate.ends(body), self._key_gate.matches(body)
        if pattern_ends is None or key_ends is None:
            return None
        # a loosened pattern may end on the character after the value (its lookahead)
        ends = [end - shift for _index, end in pattern_ends for shift in (0, 1)]
        ends += self.known.hot_ends(body)
        ends += key_ends
        ends += self.known.phone_ends(body)
        hot = [end - 1 for end in ends]  # the last byte of each match
        if len(text) != len(body):  # not ASCII: byte offsets to characters
            hot = [len(body[: at + 1].decode("utf-8", "ignore")) - 1 for at in hot]
        hot += self._decoding_strings(text)
        if "\\" in text or "%" in text or "&" in text:
            hot += [mark.start() for mark in _DECODES_FURTHER.finditer(text)]
        if "eyJ" in text:
            hot += [mark.start() for mark in _TOKEN_START.finditer(text)]
        if ";base64," in text:  # a data URL: base64 behind a label (decode.py: _follow_labelled)
            hot += [mark.start() for mark in _DATA_URL.finditer(text)]
        hot.sort()
        return hot

    def _decoding_strings(self, text: str) -> list[int]:
        """Offsets of the closing quotes of the JSON strings in ``text`` that are base64 or
        hex of text (:func:`unwrapping`): the ids and tokens of a document, all at once."""
        strings = _blob_strings(self.limits.min_blob_length)
        decoding = self._telling(unwrapping(strings.findall(text), self.limits.min_blob_length))
        if not decoding:
            return []
        return [string.end() - 1 for string in strings.finditer(text)
                if string.group(1) in decoding]

    def _telling(self, decoding: set[str]) -> set[str]:
        """Those of ``decoding`` (texts that decode: :func:`unwrapping`) whose decoded text a
        detector could find something in.

        An id of random bytes decodes to printable garbage now and then (six
        random bytes in twelve hex digits are all printable once in 400). Such
        a text is not worth a walk: its decoded text is a value with nothing
        more inside (:func:`plain_value`) where no gate opens (no written form
        or digest of a known value, no run shaped like a known number, no
        loosened pattern). Its key, the one other thing a detector looks at,
        the key gate sees in the body.
        """
        return {text for text in decoding if self._decodes_to_something(text)}

    def _decodes_to_something(self, text: str) -> bool:
        decoded = unwrapped(text, self.limits.min_blob_length)
        if decoded is None or not plain_value(decoded, self.limits):
            return True
        data = decoded.encode("utf-8", "surrogatepass")
        ends = self._gate.ends(data)
        return (ends is None or bool(ends) or bool(self.known.hot_ends(data))
                or bool(self.known.phone_ends(data)))

    def _form_hot(self, body: bytes) -> dict[int, tuple[str, str]] | None:
        """The pairs of the form body ``body`` where a detector might find something, decoded,
        by index (in order).

        The form is percent-decoded whole, once; where that adds no ``&`` or
        ``=`` (no separator was encoded) its pairs are those the decoder would
        find, value for value.  A pair is hot when its name is one a data type
        is named by (location types included: coordinates under ``lat`` count
        without a known location), or its value holds a known form or digest,
        a run shaped like a known number, a loosened pattern, or something
        that decodes further (``%``, a document, base64 or hex that
        :func:`unwraps`), or is long enough to be cut into windows.  An empty
        dict: nothing to walk; None: the gates cannot tell (walk it all).
        """
        if (len(body) > _QUIET_MAX_BYTES or self.device.location is not None
                or len(self._gate.covered) < len(self.pattern_types)):
            return None
        try:
            raw = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        text = unquote_plus(raw) if "%" in raw or "+" in raw else raw
        if text.count("&") != raw.count("&") or text.count("=") != raw.count("="):
            return None
        pairs = FORM_PAIR.findall(text)
        if not pairs:
            return {}
        names, values = zip(*pairs, strict=True)
        joined = Joined(values)
        candidates = self._gate.candidates(joined)
        if candidates is None:
            return None
        hot = {index for indices in candidates.values() for index in indices}
        hot.update(self._named_pairs(names))
        hot.update(names_that_may_be_values(names))  # ?865312345678901=1
        text = joined.text
        if "%" in text or "{" in text or "[" in text:
            hot.update(joined.indices(mark.start(), mark.end())[0]
                       for mark in _FORM_DECODES_FURTHER.finditer(text))
        if "eyJ" in text:
            hot.update(joined.indices(mark.start(), mark.end())[0]
                       for mark in _TOKEN_START.finditer(text))
        if ";base64," in text:
            hot.update(joined.indices(mark.start(), mark.end())[0]
                       for mark in _DATA_URL.finditer(text))
        if max(map(len, values)) > self.limits.max_leaf_chars:
            hot.update(index for index, value in enumerate(values)
                       if len(value) > self.limits.max_leaf_chars)
        data = joined.data
        hot.update(joined.index_at_byte(end - 1)
                   for end in (*self.known.hot_ends(data), *self.known.phone_ends(data)))
        blobs = _blob_values(self.limits.min_blob_length)
        decoding = self._telling(
            unwrapping(blobs.findall(f"\x00{text}\x00"), self.limits.min_blob_length))
        if decoding:
            hot.update(index for index, value in enumerate(values) if value in decoding)
        return {index: pairs[index] for index in sorted(hot)}

    def _named_pairs(self, names: Sequence[str]) -> Iterable[int]:
        """Indices of the ``names`` that some data type's keys, or a location type's, might name.

        All at once through the key gate, as JSON names (``"name":``), where it
        covers every key name and the names are plain ASCII; else one by one.
        """
        together = "".join(names)
        matches = (self._key_gate.matches(('"' + '":"'.join(names) + '":').encode("ascii"))
                   if self._key_gate.complete and '"' not in together and together.isascii()
                   else None)
        if matches is None:
            return [index for index, name in enumerate(names) if self._named(name)]
        starts = list(itertools.accumulate((len(name) + 3 for name in names[:-1]), initial=0))
        return {bisect_right(starts, end - 1) - 1 for end in matches}

    def _named(self, name: str) -> bool:
        """Whether some data type's keys, or a location type's, name ``name``."""
        cache = self._key_cache
        return bool(name) and bool((cache[name] if name in cache else self._types_for_key(name))
                                   or self._location_key(name))

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

        whole_known: set[tuple[str, str]] = set()  # (path, value): a known value's written form

        def search_known(leaves: list[Leaf]) -> None:  # while decoding, batch by batch
            keep(self._known_batch(leaves, problems, whole_known))

        collector = exchange_leaves(exchange, self.limits, deadline, search_known,
                                    self._json_hot, self._form_hot, self._known_quiet)
        collector.hand_over()  # also after the deadline: the surest finding, and fast
        if collector.leaves_spent:  # 50,000 values of padding must not hide a leak after them
            keep(self._known_unread(exchange, best, problems,
                                    lambda: collector.expired(exact=True)))
        analysis = Analysis(errors=collector.errors)
        analysis.errors.extend(problems)
        try:
            self._detect(collector, keep, analysis.errors, whole_known)
        except Exception as e:  # the location pass; findings so far are kept
            analysis.errors.append(f"classifier error: {type(e).__name__}: {e}")
        analysis.truncated = collector.truncated
        findings = _explained(list(best.values()), self.device.region)
        analysis.findings = sorted(findings, key=lambda f: (f.field, f.data_type))
        if not analysis.truncated and not analysis.errors:
            self._remember_quiet(collector.single_leaves, {finding.field for finding in findings})
        return analysis

    def _known_unread(self, exchange: Exchange, best: dict[tuple[str, str], Finding],
                      problems: list[str], late: Callable[[], bool]) -> list[Finding]:
        """Known values in the request as it came (URL, headers, the body within the cap,
        the client's messages within the decoded cap), when the leaf budget left values
        unread: one matcher pass, at ``request.unread``; then the policy's patterns, window
        by window, while there is time (:meth:`_patterns_unread`).  Only values not found
        already: the others have their own field."""
        found = {(f.data_type, f.value) for f in best.values()}
        body = exchange.request_body[: self.limits.max_body_bytes]
        text = "\0".join([exchange.url or "",
                           *(f"{name}: {value}" for name, value
                             in (*exchange.request_headers, *exchange.request_trailers)),
                           body.decode("utf-8", "replace"), *self._client_contents(exchange)])
        leaf = Leaf("request.unread", text, (), None, None)
        problems.append("known values searched in the unread rest of the request as it came")
        known = [finding for finding in self._detected(self._known_hits, leaf, problems)
                 if (finding.data_type, finding.value) not in found]
        return known + self._patterns_unread(text, found, problems, late)

    def _patterns_unread(self, text: str, found: set[tuple[str, str]], problems: list[str],
                         late: Callable[[], bool]) -> list[Finding]:
        """The policy's patterns over ``text`` (the unread rest), in the windows a long value
        is cut into, a few kilobytes at a time through the gate, until the clock runs out:
        an IMEI after 30,000 contacts, found without a device profile.  The first value of
        each data type not ``found`` already ends that type's search (one finding per field
        and type is kept); a type is given up after the windows where its loosened form
        matched reach ``_UNREAD_WINDOWS`` (a phone number's parse takes 100 us)."""
        if not self.pattern_types or not text:
            return []
        problems.append("policy patterns searched in the unread rest of the request as it came")
        windows = (Leaf("request.unread", window, (), None, None) for window
                   in _windows(text, self.limits.max_leaf_chars, self.limits.leaf_overlap))
        tried: dict[str, int] = dict.fromkeys((t.name for t in self.pattern_types), 0)
        new: dict[str, Finding] = {}
        for index, part in enumerate(_chunked(windows, _DETECT_CHUNK_CHARS)):
            if index >= _GRACE_CHUNKS and late():
                problems.append("out of time: the unread rest searched for patterns in part")
                break
            for data_type, where in self._pattern_places(part, Joined([leaf.value
                                                                       for leaf in part])):
                name = data_type.name
                if name in new or tried[name] >= _UNREAD_WINDOWS:
                    continue
                for window in where:
                    tried[name] += 1
                    for finding in self._detected(partial(self._pattern_in, data_type),
                                                  part[window], problems):
                        if (name, finding.value) not in found:
                            new[name] = finding
                            break
                    if name in new or tried[name] >= _UNREAD_WINDOWS:
                        break
        given_up = sorted(name for name, count in tried.items()
                          if count >= _UNREAD_WINDOWS and name not in new)
        if given_up:
            problems.append(f"the unread rest's patterns given up after {_UNREAD_WINDOWS} "
                            f"windows of candidates: {', '.join(given_up)}")
        return list(new.values())

    def _client_contents(self, exchange: Exchange) -> Iterator[str]:
        """The client's messages (WebSocket, TCP, UDP) as text, up to ``max_decoded_bytes``
        in all: 60,000 messages with the IMEI in the last fill the leaf budget first."""
        room = self.limits.max_decoded_bytes
        for message in exchange.messages:
            if room <= 0:
                return
            if message.from_client:
                content = message.content[:room]
                room -= len(content)
                yield content.decode("utf-8", "replace")

    def _remember_quiet(self, leaves: list[Leaf], fields: set[str]) -> None:
        """Remember the URL path and headers of a flow that held nothing, to skip them later.

        A phone sends the same User-Agent, Host and paths flow after flow.
        ``leaves`` are those that were one leaf as they came (nothing decoded
        from them, not cut into windows: ``Collector.single_leaves``).  One is
        remembered when it found nothing and cannot take part in a location
        found across two values (it holds no coordinate-like number): what a
        detector finds in such a leaf depends on that leaf alone.
        """
        memory = self._known_quiet
        for leaf in leaves:
            if leaf.path not in fields and not (self.location_types
                                                and _COORDINATE.search(leaf.value)):
                if len(memory) >= _QUIET_MEMORY:
                    memory.clear()
                memory[leaf.path, leaf.value] = None

    def _detect(self, collector: Collector, keep: Callable[[list[Finding]], None],
                errors: list[str], whole_known: Container[tuple[str, str]] = ()) -> None:
        """The detectors after decoding, one pass each, chunk by chunk, until the clock runs out.

        Each chunk is a few kB of values joined (core/joined.py): one regex call
        covers many values, and the clock is read between two chunks.
        ``whole_known``: (path, value) of leaves that are a known value's written
        form, which the key rules skip (:meth:`_keys_in`).
        """
        def late() -> bool:
            return collector.expired(exact=True)

        # Out of time already (decoding a giant body can take it all): each detector still
        # reads the first few chunks, the URL, headers and the start of the body, so that an
        # IMEI at the start of a 16 MB body is found (bounded: about a millisecond).
        parts = _chunked(collector.leaves, _DETECT_CHUNK_CHARS)
        chunks = [(part, Joined([leaf.value for leaf in part]))
                  for part in (islice(parts, _GRACE_CHUNKS) if late() else parts)]
        passes: list[Callable[[list[Leaf], Joined, list[str]], Iterator[Finding]]] = []
        if self.known.known_phones:
            passes.append(self._known_phone_numbers)
        passes += [partial(self._keys_in, skip=whole_known), self._pattern_batch]
        for detector in passes:
            for index, (part, joined) in enumerate(chunks):
                if index >= _GRACE_CHUNKS and late():
                    break
                keep(list(detector(part, joined, errors)))
        keep(list(self._location_hits(chunks, late)))

    def _keys_in(self, leaves: list[Leaf], _joined: Joined, errors: list[str],
                 skip: Container[tuple[str, str]] = ()) -> Iterator[Finding]:
        """Key rules' findings in ``leaves``.  A leaf in ``skip`` is a known value's written
        form, whole: a key rule could only find that value again, under its own data type
        or another, and :func:`_explained` drops a guess a known finding of the same field
        names (a contact's number under ``phone``), so it is not asked (a phone number's
        parse is 100 us)."""
        cache = self._key_cache
        for leaf in leaves:
            key = leaf.key
            if key and (leaf.path, leaf.value) not in skip and (
                    cache[key] if key in cache else self._types_for_key(key)):
                yield from self._detected(self._key_hits, leaf, errors)

    @staticmethod
    def _detected(detector: Callable[[Leaf], Iterator[Finding]], leaf: Leaf,
                  errors: list[str]) -> list[Finding]:
        """What ``detector`` finds in ``leaf``; a failure costs this leaf, not the flow."""
        try:
            return [*detector(leaf)]
        except Exception as e:  # hostile values must not end the analysis
            errors.append(f"classifier error at {leaf.path}: {type(e).__name__}: {e}")
            return []


def _remembered(table: dict[tuple[str, str], bool], slot: tuple[str, str],
                verdict_of: Callable[[], bool]) -> bool:
    """``table[slot]``, worked out by ``verdict_of`` the first time; the table is emptied
    when it grows past 20,000 (a flood of distinct values must not fill memory)."""
    verdict = table.get(slot)
    if verdict is None:
        if len(table) > 20_000:
            table.clear()
        verdict = table[slot] = verdict_of()
    return verdict


def _chunked(leaves: Iterable[Leaf], size: int) -> Iterator[list[Leaf]]:
    """``leaves`` in runs of about ``size`` characters of values (at least one leaf each)."""
    part: list[Leaf] = []
    chars = 0
    for leaf in leaves:
        part.append(leaf)
        chars += len(leaf.value) + 1
        if chars >= size:
            yield part
            part, chars = [], 0
    if part:
        yield part


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


_NOT_DIGIT = re.compile(r"\D")


def _may_be_known(span: str, tails: dict[int, frozenset[str]]) -> bool:
    digits = span if span.isdigit() else _NOT_DIGIT.sub("", span)
    return any(digits[-size:] in values for size, values in tails.items())
