"""Where the policy's patterns and key names might match, found in one native scan.

Python's ``re`` tries a lookbehind at every position of a text, tens of
nanoseconds each: five patterns over a 2 kB flow cost more than decoding
it.  :class:`PatternGate` compiles a loosened form of every pattern
(``safe_regex.loose_source``: lookarounds dropped, so it matches a superset)
into one hyperscan database and scans a chunk of joined values once.  The
exact pattern then runs only on the values where its loose form ended.

A pattern hyperscan cannot compile is left out (the classifier runs it on
every value, as before), and a chunk with more matches than
``MAX_MATCHES`` (a flood of digits) answers None: run everything there.

:class:`KeyGate` does the same for key names, on a whole JSON body: with
the known-value, phone and pattern gates it tells the classifier where in a
document a detector could find something, so that only those parts are walked.
"""

from __future__ import annotations

from collections.abc import Sequence

import hyperscan

from leakmap.core.joined import Joined
from leakmap.core.safe_regex import PolicyRegex, loose_source
from leakmap.core.scanner import Scanner

MAX_MATCHES = 4096
_FLAGS = hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_UCP | hyperscan.HS_FLAG_ALLOWEMPTY


def _scanner(sources: dict[int, bytes]) -> tuple[Scanner | None, dict[int, bytes]]:
    """One scanner of ``sources`` (id -> pattern) and the sources in it.

    The set is compiled once; only if hyperscan refuses it is each pattern
    tried alone, and the refused ones are left out.
    """
    if not sources:
        return None, {}
    try:
        return _compile(sources), sources
    except hyperscan.error:
        accepted = {index: source for index, source in sources.items() if _compiles(source)}
        return (_compile(accepted) if accepted else None), accepted


def _compile(sources: dict[int, bytes]) -> Scanner:
    return Scanner.compile(list(sources.values()), list(sources), [_FLAGS] * len(sources))


def _compiles(source: bytes) -> bool:
    try:
        _compile({0: source})
    except hyperscan.error:
        return False
    return True


class PatternGate:
    """The values of a chunk where each covered pattern might match."""

    def __init__(self, regexes: Sequence[PolicyRegex]) -> None:
        sources = {index: loose_source(regex) for index, regex in enumerate(regexes)}
        self._scanner, accepted = _scanner({index: source.encode()
                                            for index, source in sources.items()
                                            if source is not None})
        self.covered = frozenset(accepted)

    def candidates(self, joined: Joined) -> dict[int, set[int]] | None:
        """Pattern index -> indices of the values where it might match (absent: none).

        None when the chunk cannot be gated (text that is not valid UTF-8, or a
        flood of matches): then every covered pattern must run on every value.
        """
        if not joined.valid_utf8:
            return None
        ends = self.ends(joined.data)
        if ends is None:
            return None
        found: dict[int, set[int]] = {}
        for index, end in ends:
            found.setdefault(index, set()).add(joined.index_at_byte(max(0, end - 1)))
        return found

    def ends(self, data: bytes) -> list[tuple[int, int]] | None:
        """(pattern index, end offset) of every place in ``data`` where a covered
        pattern might match; None when it cannot tell (no scanner, a flood)."""
        return None if self._scanner is None else _matches(self._scanner, data)


class KeyGate:
    """Where JSON names that some data type is named by might be.

    Each key name's loosened pattern, between quotes and before a colon, goes
    into one hyperscan database.  A key name that cannot be loosened makes
    the gate open everywhere (:attr:`complete` is False).
    """

    def __init__(self, names: Sequence[PolicyRegex]) -> None:
        sources = [loose_source(name) for name in names]
        keys = {index: b'"(?:' + source.encode() + rb')"[ \t\r\n]*:'
                for index, source in enumerate(sources) if source is not None}
        self._scanner, accepted = _scanner(keys)
        self.complete = len(accepted) == len(names)  # else a key could hide from the gate

    def matches(self, data: bytes) -> list[int] | None:
        """End offsets (each just past the colon) of every name in ``data`` that a key
        name might match; None for a flood."""
        if self._scanner is None:
            return []
        found = _matches(self._scanner, data)
        return None if found is None else [end for _index, end in found]


def _matches(scanner: Scanner, data: bytes) -> list[tuple[int, int]] | None:
    """(pattern id, end offset) of every match of ``scanner`` in ``data``; None for a flood
    of :data:`MAX_MATCHES` or more (the scan stops there)."""
    found: list[tuple[int, int]] = []

    def on_match(index: int, _start: int, end: int, _flags: int, _context: object) -> bool:
        found.append((index, end))
        return len(found) >= MAX_MATCHES  # True stops the scan

    scanner.scan(data, on_match)
    return None if len(found) >= MAX_MATCHES else found
