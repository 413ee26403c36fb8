"""The run's capture written by a process of its own, so that the proxy keeps its core.

A flow file is a series of tnetstrings (``addons/flows.py``): turning a
flow's state into one is pure Python, about 50 µs for a small HTTP flow, on
the event loop that every request needs.  :class:`CaptureWriter` hands the
states instead (plain dicts, pickled in C) to one child process, which
serialises them and appends them to the file, in the order they came:

* the states of a twentieth of a second go out together, as one frame on a
  non-blocking pipe (each frame costs both processes system calls and a
  wake-up, which on a virtual machine cost more than the bytes); the frame
  is the one the analysis process reads too (``addons/handover.py``);
* the child writes each frame's flows with one system call and answers
  nothing: the proxy's side only writes;
* on end-of-file (the proxy stopped, or was killed) the child writes what
  the pipe still holds, then exits.

If the child cannot start or dies, ``failure`` says why and the Capture
addon writes the file itself again, from the last whole flow in it, starting
with the flows that had not reached the pipe (``leftover``); those the child
had taken but not written when it died are missing from the capture.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import signal
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from leakmap.addons.analysis_worker import yield_to_the_proxy
from leakmap.addons.flows import tnetstring_parts
from leakmap.addons.handover import CAPTURE, IOV_MAX, Entry, Frame, PipeOut, read_message

_PIPE_SIZE = 1 << 20  # asked of the kernel, so that a burst does not wait on the child


def _write_states(path: str, requests: Connection) -> None:
    """The child's whole life: append each frame's flows to ``path`` until end-of-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the proxy's; it closes the pipe
    yield_to_the_proxy()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            while (read := read_message(requests.fileno())) is not None:
                states, marks = read[0]
                _write_all(descriptor, tnetstring_parts(
                    [state for state, mark in zip(states, marks, strict=True) if mark & CAPTURE]))
        finally:
            os.close(descriptor)
    except Exception:  # the file cannot be written (the proxy's own try then says why), the
        # proxy is gone, or a state would not serialise: no traceback on the tester's console
        os._exit(CANNOT_WRITE)


CANNOT_WRITE = 3
_SMALL = 1 << 16  # parts up to this size are joined before they are written


def _write_all(descriptor: int, parts: list[bytes]) -> None:
    """Write ``parts`` in order: the small ones joined, a large one (a body) as it is,
    without a copy of the whole."""
    pieces: list[bytes] = []
    small: list[bytes] = []
    for part in parts:
        if len(part) <= _SMALL:
            small.append(part)
            continue
        if small:
            pieces.append(b"".join(small))
            small = []
        pieces.append(part)
    if small:
        pieces.append(b"".join(small))
    views = [memoryview(piece) for piece in pieces]
    while views:
        written = os.writev(descriptor, views[:IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


class CaptureWriter:
    """One child process appending the flow states it reads (``addons/handover.py``: the
    frames a :class:`~leakmap.addons.handover.StateFeed` gives it) to one flow file."""

    def __init__(self, path: Path) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the proxy holds threads
        requests_in, self._requests = context.Pipe(duplex=False)
        self._process = context.Process(target=_write_states, name="leakmap-capture",
                                        daemon=True, args=(str(path), requests_in))
        self._process.start()
        requests_in.close()
        descriptor = self._requests.fileno()
        os.set_blocking(descriptor, False)
        with contextlib.suppress(OSError):  # a smaller pipe only means more waiting here
            fcntl.fcntl(descriptor, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self.pipe = PipeOut(descriptor, self._broken, self._forget_written)
        # the frames not yet wholly in the pipe: where each ends in the stream of bytes, and
        # the states it holds for the capture
        self._unwritten: deque[tuple[int, list[dict[str, Any]]]] = deque()
        self.failure: str | None = None
        self.leftover: list[dict[str, Any]] = []  # once failed: states it did not take

    def read(self, frame: Frame, entries: list[Entry]) -> None:
        """Write the frame's flows that are for the capture; once failed, keep them in
        ``leftover``."""
        states = [entry.state for entry in entries if entry.marks & CAPTURE]
        if not states:
            return
        if self.failure is not None:
            self.leftover += states
            return
        self.pipe.add(frame)
        self._unwritten.append((self.pipe.handed, states))
        self.pipe.write()
        self._forget_written()

    def _forget_written(self) -> None:
        """A frame wholly in the pipe is the child's to write (even if this process dies);
        one partly there is not (its flows are ``leftover`` if the child dies, and written
        by the proxy)."""
        while self._unwritten and self._unwritten[0][0] <= self.pipe.sent:
            self._unwritten.popleft()

    def _broken(self, why: str) -> None:
        code = self._process.exitcode
        self.failure = why if code is None else f"{why} (exit code {code})"
        # never wholly in the pipe: the child cannot have written them
        self._forget_written()
        self.leftover += [state for _, states in self._unwritten for state in states]
        self._unwritten.clear()

    def close(self) -> None:
        """Wait until the child has written all it was given (the feed flushed first), and
        end it."""
        if self.failure is None:
            self.pipe.finish()
            self._forget_written()
        self.pipe.stop_watching()
        self._requests.close()
        self._process.join(60)
        if self._process.exitcode not in (0, None) and self.failure is None:
            self.failure = f"the capture process stopped (exit code {self._process.exitcode})"


def complete_length(path: Path) -> int:
    """The length of ``path`` up to its last whole flow (a process that died while writing
    may have left part of one)."""
    end, size = 0, path.stat().st_size
    with path.open("rb") as handle:
        while True:
            handle.seek(end)
            prefix = handle.read(13)
            colon = prefix.find(b":")
            if colon < 1 or not prefix[:colon].isdigit():
                return end
            record_end = end + colon + 1 + int(prefix[:colon]) + 1
            if record_end > size:
                return end
            end = record_end
