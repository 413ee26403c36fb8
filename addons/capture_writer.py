"""The run's capture written by a process of its own, so that the proxy keeps its core.

A flow file is a series of tnetstrings (``addons/flows.py``): turning a
flow's state into one is pure Python, about 50 µs for a small HTTP flow, on
the event loop that every request needs.  :class:`CaptureWriter` hands the
states instead (plain dicts, pickled in C) to one child process, which
serialises them and appends them to the file, in the order they came:

* the states handed over during a twentieth of a second go out together, as
  one frame on a non-blocking pipe (each frame costs both processes system
  calls and a wake-up, which on a virtual machine cost more than the bytes);
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

import asyncio
import contextlib
import fcntl
import multiprocessing
import os
import pickle
import signal
import struct
from collections import deque
from itertools import islice
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from leakmap.addons.analysis_worker import _read_exactly, yield_to_the_proxy
from leakmap.addons.flows import tnetstring_parts

HAND_OVER_S = 0.05  # states wait at most this long to go out together
_HAND_OVER_BYTES = 1 << 20  # or until this many bytes of bodies wait
_PIPE_SIZE = 1 << 20  # asked of the kernel, so that a burst does not wait on the child


def _write_states(path: str, requests: Connection) -> None:
    """The child's whole life: append each frame's flows to ``path`` until end-of-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the proxy's; it closes the pipe
    yield_to_the_proxy()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            while (states := _read_states(requests.fileno())) is not None:
                _write_all(descriptor, tnetstring_parts(states))
        finally:
            os.close(descriptor)
    except Exception:  # the file cannot be written (the proxy's own try then says why), the
        # proxy is gone, or a state would not serialise: no traceback on the tester's console
        os._exit(CANNOT_WRITE)


CANNOT_WRITE = 3
# A frame: the pickle's length and how many bodies follow it out of band, the pickle, then
# each body as its length and its bytes.  A body travels from the flow's own bytes in the
# proxy into the buffer its state then holds here: a 300 MB upload is not copied on the way.
_FRAME = struct.Struct("!QQ")
_BODY = struct.Struct("!Q")
_OUT_OF_BAND = 1 << 16  # bodies from this size on


def _read_states(descriptor: int) -> list[dict[str, Any]] | None:
    """The states of the next frame, or None at end-of-file."""
    header = _read_exactly(descriptor, _FRAME.size)
    if header is None:
        return None
    size, count = _FRAME.unpack(header)
    data = _read_exactly(descriptor, size)
    bodies = []
    for _ in range(count if data is not None else 0):
        length = _read_exactly(descriptor, _BODY.size)
        body = _read_exactly(descriptor, _BODY.unpack(length)[0]) if length is not None else None
        if body is None:
            return None
        bodies.append(body)
    return None if data is None else pickle.loads(data, buffers=bodies)  # type: ignore[no-any-return]


def _framed(states: list[dict[str, Any]]) -> tuple[list[memoryview], int]:
    """The frame of ``states`` as views to write, and its length; the states are not changed."""
    bodies: list[pickle.PickleBuffer] = []
    data = pickle.dumps([_bodies_apart(state) for state in states], protocol=5,
                        buffer_callback=bodies.append)
    views = [memoryview(_FRAME.pack(len(data), len(bodies))), memoryview(data)]
    for body in bodies:
        raw = body.raw()
        views += (memoryview(_BODY.pack(len(raw))), raw)
    return views, sum(len(view) for view in views)


def _bodies_apart(state: dict[str, Any]) -> dict[str, Any]:
    """``state``, with its large request and response bodies as out-of-band buffers (in a
    copy of the dicts that hold them)."""
    changed = None
    for part in ("request", "response"):
        message = state.get(part)
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if type(content) is bytes and len(content) >= _OUT_OF_BAND:
            changed = changed or dict(state)
            changed[part] = {**message, "content": pickle.PickleBuffer(content)}
    return changed or state


_IOV_MAX = 1024  # buffers per writev (Linux's limit)
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
        written = os.writev(descriptor, views[:_IOV_MAX])
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


class CaptureWriter:
    """One child process appending the flow states handed to it to one flow file."""

    def __init__(self, path: Path) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the proxy holds threads
        requests_in, self._requests = context.Pipe(duplex=False)
        self._process = context.Process(target=_write_states, name="leakmap-capture",
                                        daemon=True, args=(str(path), requests_in))
        self._process.start()
        requests_in.close()
        self._fd = self._requests.fileno()
        os.set_blocking(self._fd, False)
        with contextlib.suppress(OSError):  # a smaller pipe only means more waiting here
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._queued: list[dict[str, Any]] = []
        self._queued_bytes = 0
        # the bytes not yet in the pipe, frame by frame: each frame's pickle is written from
        # where it lies (a giant body's frame is not copied once more into one buffer)
        self._outgoing: deque[memoryview] = deque()
        # the frames in _outgoing: where each ends in the stream of bytes, and its states
        self._unwritten: deque[tuple[int, list[dict[str, Any]]]] = deque()
        self._handed = 0  # bytes put in _outgoing so far
        self._sent = 0  # bytes the pipe took so far
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failure: str | None = None
        self.leftover: list[dict[str, Any]] = []  # once failed: states it did not take

    def save(self, state: dict[str, Any], size: int) -> bool:
        """Queue ``state`` (about ``size`` bytes of bodies); False if it was not taken, the
        child being known gone (``failure``; what it took but did not write is in
        ``leftover``)."""
        if self.failure is not None:
            return False
        self._queued.append(state)
        self._queued_bytes += size
        if self._queued_bytes >= _HAND_OVER_BYTES:
            self._send()
        elif self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._timer = self._loop.call_later(HAND_OVER_S, self._send)
        return True

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._queued and self.failure is None:
            self._frame_queued()
        self._queued, self._queued_bytes = [], 0
        self._write()

    def _frame_queued(self) -> None:
        views, size = _framed(self._queued)
        self._outgoing += views
        self._handed += size
        self._unwritten.append((self._handed, self._queued))

    def _write(self) -> None:
        if self.failure is not None:
            return
        try:
            written = os.writev(self._fd, list(islice(self._outgoing, _IOV_MAX))) \
                if self._outgoing else 0
        except BlockingIOError:
            written = 0
        except OSError as e:  # the child is gone
            self._broken(f"writing to it failed: {e}")
            return
        self._taken(written)
        loop = self._loop or asyncio.get_running_loop()
        if self._outgoing:
            loop.add_writer(self._fd, self._write)
        else:
            loop.remove_writer(self._fd)

    def _taken(self, written: int) -> None:
        """``written`` more bytes are in the pipe: a frame wholly there is the child's to write
        (even if this process dies); one partly there is not (its flows are ``leftover`` if
        the child dies, and written here)."""
        self._sent += written
        while written and written >= len(self._outgoing[0]):
            written -= len(self._outgoing.popleft())
        if written:
            self._outgoing[0] = self._outgoing[0][written:]
        while self._unwritten and self._unwritten[0][0] <= self._sent:
            self._unwritten.popleft()

    def _broken(self, why: str) -> None:
        code = self._process.exitcode
        self.failure = why if code is None else f"{why} (exit code {code})"
        # never wholly in the pipe: the child cannot have written them
        self.leftover = [state for _, states in self._unwritten for state in states] + self._queued
        self._outgoing.clear()
        self._unwritten.clear()
        self._queued = []
        if self._loop is not None:
            self._loop.remove_writer(self._fd)

    def close(self) -> None:
        """Hand over what is queued, wait until the child has written it all, and end it."""
        if self.failure is None:
            self._send()
            if self._outgoing:  # the loop is stopping: finish the frame here, blocking
                if self._loop is not None:
                    self._loop.remove_writer(self._fd)
                os.set_blocking(self._fd, True)
                try:
                    while self._outgoing:  # blocking: each call takes what it is given
                        self._taken(os.writev(self._fd, list(islice(self._outgoing, _IOV_MAX))))
                except OSError as e:
                    self._broken(f"writing to it failed: {e}")
        if self._loop is not None:
            self._loop.remove_writer(self._fd)
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
