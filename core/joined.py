"""Many values as one text, so that a detector scans a flow in one call.

A flow has about a hundred values (JSON fields, headers, form fields).
Running every regex and the known-value matcher once per value costs a
Python call each time; running them once over all values joined by ``NUL``
costs one.  :class:`Joined` holds the joined text and maps a match back to
the value it lies in, with offsets inside that value.  ``NUL`` is neither a
word character, a digit, a space nor a quote, so a match at the edge of a
value sees what it would see at the edge of the value alone.

A match that runs across a separator belongs to no single value: ``locate``
returns None for it.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence

SEPARATOR = "\x00"
_SURROGATE = re.compile("[\ud800-\udfff]")


def _starts(lengths: Sequence[int]) -> list[int]:
    starts, position = [], 0
    for length in lengths:
        starts.append(position)
        position += length + 1
    return starts


class Joined:
    """``values`` joined by NUL, as ``text`` (str) and, on demand, ``data`` (UTF-8 bytes)."""

    def __init__(self, values: Sequence[str]) -> None:
        self.values = values
        self.text = SEPARATOR.join(values)
        self.ascii = self.text.isascii()
        self._starts = [0] if len(values) == 1 else _starts([len(value) for value in values])
        self._encoded: list[bytes] | None = None
        self._byte_starts: list[int] | None = None
        self._data: bytes | None = None

    def locate(self, start: int, end: int) -> tuple[int, int, int] | None:
        """(value index, start, end in that value) of ``text[start:end]``."""
        index = bisect_right(self._starts, start) - 1
        offset = self._starts[index]
        if end - offset > len(self.values[index]):
            return None
        return index, start - offset, end - offset

    def indices(self, start: int, end: int) -> range:
        """The values that ``text[start:end]`` touches."""
        first = bisect_right(self._starts, start) - 1
        last = bisect_right(self._starts, max(start, end - 1)) - 1
        return range(first, last + 1)

    @property
    def valid_utf8(self) -> bool:
        """Whether :attr:`data` is valid UTF-8 (no lone surrogates in the values)."""
        return self.ascii or _SURROGATE.search(self.text) is None

    def index_at_byte(self, position: int) -> int:
        """The value that byte ``position`` of :attr:`data` belongs to (a separator: the one before)."""
        self.data  # noqa: B018 - builds the byte offsets
        starts = self._starts if self._byte_starts is None else self._byte_starts
        return bisect_right(starts, position) - 1

    @property
    def data(self) -> bytes:
        """The joined text as UTF-8 (lone surrogates passed through)."""
        if self._data is None:
            if self.ascii:
                self._data = self.text.encode("ascii")
            else:
                self._encoded = [v.encode("utf-8", "surrogatepass") for v in self.values]
                self._byte_starts = _starts([len(raw) for raw in self._encoded])
                self._data = SEPARATOR.encode().join(self._encoded)
        return self._data

    def locate_bytes(self, start: int, end: int) -> tuple[int, int, int] | None:
        """Like :meth:`locate` for a match in :attr:`data`; offsets are characters."""
        data = self.data
        if self._encoded is None or self._byte_starts is None:
            return self.locate(start, end) if end <= len(data) else None
        index = bisect_right(self._byte_starts, start) - 1
        raw, offset = self._encoded[index], self._byte_starts[index]
        if end - offset > len(raw):
            return None
        try:
            head = raw[: start - offset].decode("utf-8", "surrogatepass")
            body = raw[start - offset : end - offset].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:  # not on a character's edge: no literal of ours
            return None
        return index, len(head), len(head) + len(body)
