"""One compiled hyperscan database, safe to scan from any thread, and picklable.

A scan needs scratch space that no other scan uses at the same time; each
thread gets its own.  A match handler returning True stops the scan, which
hyperscan reports as ``ScanTerminated``: :meth:`Scanner.scan` takes that as
the normal end it is.  Pickled, the database travels serialized (the
matcher's start-up cache, core/known.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import hyperscan

MatchHandler = Callable[[int, int, int, int, object], bool | None]


class Scanner:
    """A block-mode hyperscan database with per-thread scratch space."""

    def __init__(self, database: hyperscan.Database) -> None:
        self.database = database
        self._local = threading.local()

    @classmethod
    def compile(cls, patterns: Sequence[bytes], ids: Sequence[int], flags: Sequence[int],
                literal: bool = False) -> Scanner:
        """The patterns in one database; raises ``hyperscan.error`` if refused."""
        database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        database.compile(expressions=list(patterns), ids=list(ids), elements=len(patterns),
                         flags=list(flags), literal=literal)
        return cls(database)

    def scan(self, data: bytes, on_match: MatchHandler, context: object = None) -> None:
        """Call ``on_match(id, start, end, flags, context)`` for each match in ``data``."""
        try:
            scratch = self._local.scratch
        except AttributeError:
            scratch = self._local.scratch = hyperscan.Scratch(self.database)
        try:  # not contextlib.suppress: no object per call on this hot path
            self.database.scan(data, match_event_handler=on_match, context=context,
                               scratch=scratch)
        except hyperscan.ScanTerminated:
            return  # a handler stopped the scan: the normal end

    def __getstate__(self) -> bytes:
        return hyperscan.dumpb(self.database)

    def __setstate__(self, state: bytes) -> None:
        self.__init__(hyperscan.loadb(state, hyperscan.HS_MODE_BLOCK))  # type: ignore[misc]
