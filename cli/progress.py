"""A progress line for long commands: on a terminal only, quiet when piped or redirected."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_EVERY_S = 0.2  # redraws per second at most: drawing must not cost the work it shows
_WIDTH = 24


class Progress:
    """``[#####-----] 2/3 captures  12,345 flows  678 findings  2,100 flows/s``, redrawn in place."""

    def __init__(self, captures: int, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.captures, self.done = captures, 0
        self.flows = self.findings = 0
        self.started = self.drawn = time.monotonic()

    def add(self, flows: int, findings: int) -> None:
        self.flows += flows
        self.findings += findings
        now = time.monotonic()
        if self.enabled and now - self.drawn >= _EVERY_S:
            self.drawn = now
            self._draw()

    def capture_done(self) -> None:
        self.done += 1
        if self.enabled:
            self._draw()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")  # the final summary line takes its place
            self.stream.flush()

    def _draw(self) -> None:
        filled = round(_WIDTH * self.done / max(1, self.captures))
        rate = self.flows / max(1e-6, time.monotonic() - self.started)
        self.stream.write(f"\r[{'#' * filled}{'-' * (_WIDTH - filled)}] {self.done}/{self.captures} "
                          f"captures  {self.flows:,} flows  {self.findings:,} findings  "
                          f"{rate:,.0f} flows/s\x1b[K")
        self.stream.flush()


class Stages:
    """``report: reading findings ... 12.3 s``: the step a command is at, redrawn in place."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()

    def show(self, step: str) -> None:
        if self.enabled:
            self.stream.write(f"\r{step} ... {time.monotonic() - self.started:.1f} s\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
