"""Schema-less protobuf: field numbers and values from the wire format.

Only a buffer that parses completely, with every length inside it, counts as
protobuf; lying lengths and stray wire types make :func:`parse` return None.
Length-delimited fields are read as nested messages when they parse whole,
else as UTF-8 text when they are text, else skipped.  Below ``max_depth``
a field is not parsed further: its printable strings stand for it.
"""

from __future__ import annotations

import math
import re
import struct
import time

Field = tuple[str, str | int | float]


class _Invalid(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise _Invalid("varint runs past the end")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise _Invalid("varint too long")


_LINE_CONTROLS = str.maketrans("", "", "\r\n\t")


def _text(chunk: bytes) -> str | None:
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # every character printable, or CR, LF or tab: tested at C speed
    return text if text and text.translate(_LINE_CONTROLS).isprintable() else None


_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{6,}")


class _Notes(list[str]):
    def once(self, problem: str) -> None:
        if problem not in self:
            self.append(problem)


class _Budget:
    """Fields still to read, over the whole buffer (nested attempts included), and the time.

    The clock is read every 1,024 fields; past ``deadline`` no more is read.
    """

    def __init__(self, fields: int | None, deadline: float | None = None) -> None:
        self.left = fields
        self.spent = False
        self.deadline = deadline
        self.late = False
        self.taken = 0

    def take(self) -> bool:
        if self.deadline is not None:
            self.taken += 1
            if self.late or (self.taken % 1024 == 0 and time.monotonic() > self.deadline):
                self.late = True
                return False
        if self.left is None:
            return True
        if self.left <= 0:
            self.spent = True
            return False
        self.left -= 1
        return True


def _length_delimited(
    chunk: bytes, prefix: str, depth: int, max_depth: int, notes: _Notes, budget: _Budget
) -> list[Field]:
    text = _text(chunk)
    if text is not None:
        return [(prefix, text)]
    if depth < max_depth:
        own = _Notes()  # kept only if the chunk is a message after all
        nested = _parse(chunk, depth + 1, max_depth, prefix, own, budget)
        if nested is None:
            return []
        for problem in own:
            notes.once(problem)
        return nested
    runs: list[Field] = [(prefix, run.decode("ascii")) for run in _PRINTABLE_RUN.findall(chunk)]
    if runs or chunk:
        notes.once(f"protobuf nested deeper than {max_depth}: deeper fields read as strings")
    return runs


def _float_field(prefix: str, value: float) -> list[Field]:
    # a plausible number (a coordinate, a price): not a denormal that an integer's bytes make
    return [(prefix, value)] if math.isfinite(value) and 1e-6 <= abs(value) < 1e7 else []


def _parse(
    data: bytes, depth: int, max_depth: int, prefix: str, notes: _Notes, budget: _Budget
) -> list[Field] | None:
    fields: list[Field] = []
    pos = 0
    try:
        while pos < len(data) and budget.take():
            tag, pos = _varint(data, pos)
            number, wire_type = tag >> 3, tag & 7
            if number == 0:
                raise _Invalid("field number 0")
            name = f"{prefix}.{number}" if prefix else str(number)
            if wire_type == 0:
                value, pos = _varint(data, pos)
                fields.append((name, value))
            elif wire_type == 1:
                if pos + 8 > len(data):
                    raise _Invalid("fixed64 runs past the end")
                # a double (a coordinate), else an integer: Android's check-in sends its
                # android_id as fixed64, and an IMEI fits in one
                fields += (_float_field(name, struct.unpack_from("<d", data, pos)[0])
                           or [(name, struct.unpack_from("<Q", data, pos)[0])])
                pos += 8
            elif wire_type == 2:
                length, pos = _varint(data, pos)
                if pos + length > len(data):
                    raise _Invalid("length runs past the end")
                fields += _length_delimited(data[pos : pos + length], name, depth, max_depth,
                                            notes, budget)
                pos += length
            elif wire_type == 5:
                if pos + 4 > len(data):
                    raise _Invalid("fixed32 runs past the end")
                fields += _float_field(name, struct.unpack_from("<f", data, pos)[0])
                pos += 4
            else:
                raise _Invalid(f"wire type {wire_type}")
    except _Invalid:
        return None
    return fields


def parse(
    data: bytes, max_depth: int = 16, notes: list[str] | None = None,
    max_fields: int | None = None, deadline: float | None = None,
) -> list[Field] | None:
    """(field path, value) pairs, e.g. ``("1.3", "text")``; None if not protobuf.

    At most ``max_fields`` fields are read (nested attempts count), and
    none after ``deadline`` (``time.monotonic()``): what parsed up to there
    is the answer.  What could not be read in full is added to ``notes``
    (running out of time is the caller's to note).
    """
    if not data:
        return None
    found, budget = _Notes(), _Budget(max_fields, deadline)
    fields = _parse(data, 0, max_depth, "", found, budget)
    if budget.spent:
        found.once(f"protobuf with more than {max_fields} fields: the rest not read")
    if fields is not None and notes is not None:
        notes.extend(found)
    return fields
