"""Analysis in a process of its own, so that the proxy keeps its core.

Decoding and classifying a flow is pure Python.  On a thread of the proxy's
process it holds the GIL that mitmproxy's event loop needs for every request,
so each flow under analysis delays the next requests (by up to the
interpreter's 5 ms switch interval at a time) and all of it shares one core.
:class:`AnalysisWorker` runs :meth:`Pipeline.process` in one child process
instead, and the proxy's side of it runs on the event loop alone, with no
thread of its own to take the GIL:

* the exchanges handed over during one turn of the loop go out together, as
  one pickled frame, written to a non-blocking pipe (``loop.add_writer``
  finishes a frame the pipe could not take at once);
* the child answers each frame with one frame of records, read by
  ``loop.add_reader``; the records come back in order, so each one settles
  the oldest waiting future.

One process, so flows are analysed in the order they finished, as on a
thread: the locator's state (DNS answers seen so far) follows the traffic.
The child builds its own pipeline from the same settings (``build_pipeline``)
in the background while the proxy already forwards; flows that finish
meanwhile are analysed on threads, as without a child, so that none waits
for the child's start (and a proxy killed in its first seconds has recorded
them).  If the child dies, the Inspector notes it and goes back to threads.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import struct
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from leakmap.core.exchange import Exchange
from leakmap.core.pipeline import FlowRecord, record_from_summary, record_summary

_HEADER = struct.Struct("!Q")  # the length of the pickled frame that follows
_MAX_BATCH = 64  # exchanges per frame: the child answers a frame once all of it is done
_READ_SIZE = 1 << 20


class WorkerBroken(RuntimeError):
    """The analysis process is gone or refused an exchange."""


# --------------------------------------------------------------------------
# the child


def _serve(settings: dict[str, Any], parent: int, requests: Connection,
           results: Connection) -> None:
    """The child's whole life: build the pipeline, then answer frames until end-of-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the proxy's; it closes the pipe
    _follow_parent(parent)
    try:
        _answer(settings, requests.fileno(), results.fileno())
    except OSError:  # the proxy closed its ends (a new configuration) or is gone
        return


def _answer(settings: dict[str, Any], requests_fd: int, results_fd: int) -> None:
    try:
        from leakmap.wiring import build_pipeline

        pipeline = build_pipeline(**settings).pipeline
    except BaseException as e:  # reported to the proxy, which goes on with threads
        _write_frame(results_fd, ("failed", f"{type(e).__name__}: {e}"))
        return
    _write_frame(results_fd, ("ready",))
    while (frame := _read_frame(requests_fd)) is not None:
        answers: list[tuple[bool, Any]] = []
        for exchange in pickle.loads(frame):  # our own parent's frames
            try:
                answers.append((True, record_summary(pipeline.process(exchange))))
            except Exception as e:  # the proxy analyses this one on a thread instead
                answers.append((False, f"{type(e).__name__}: {e}"))
        _write_frame(results_fd, ("results", answers))


def _follow_parent(parent: int) -> None:
    """End this process when the proxy is gone (``kill -9`` leaves no one to close the pipe
    while the pipeline is still being built)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="leakmap-parent-watch", daemon=True).start()


def _write_frame(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        part = os.read(fd, min(left, _READ_SIZE))
        if not part:
            return None
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_frame(fd: int) -> bytes | None:
    """The next frame, or None at end-of-file (the proxy closed the pipe or died)."""
    header = _read_exactly(fd, _HEADER.size)
    return None if header is None else _read_exactly(fd, _HEADER.unpack(header)[0])


# --------------------------------------------------------------------------
# the proxy's side


def wanted(choice: str) -> bool:
    """Whether ``choice`` (the ``workers`` setting: auto, 0 or 1) means a worker process."""
    if choice == "auto":
        return (os.cpu_count() or 1) >= 2
    return choice == "1"


class AnalysisWorker:
    """One child process running ``Pipeline.process`` on the flows handed to it, in order."""

    def __init__(self, settings: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: the proxy holds threads
        requests_in, self._requests = context.Pipe(duplex=False)
        self._results, results_out = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, name="leakmap-analysis", daemon=True,
                                        args=(settings, os.getpid(), requests_in, results_out))
        self._process.start()
        requests_in.close()
        results_out.close()
        # the descriptors as numbers: the loop's watches on them are removed before they close
        self._requests_fd, self._results_fd = self._requests.fileno(), self._results.fileno()
        os.set_blocking(self._requests_fd, False)
        os.set_blocking(self._results_fd, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: list[tuple[Exchange, asyncio.Future[dict[str, Any]]]] = []
        self._waiting: deque[asyncio.Future[dict[str, Any]]] = deque()
        self._outgoing = bytearray()
        self._incoming = bytearray()
        self._started = False
        self._error: str | None = None
        self._closing = False

    @property
    def ready(self) -> bool:
        """Whether the child has built its pipeline and takes flows (else: threads)."""
        self._attach()
        return self._started and self._error is None and not self._closing

    @property
    def failure(self) -> BaseException | None:
        """Why the child could not start, or died, once it is known."""
        self._attach()
        return WorkerBroken(self._error) if self._error is not None else None

    async def process(self, exchange: Exchange) -> tuple[FlowRecord, dict[str, Any]]:
        """The record of ``exchange`` and its summary as the child sent it; raises
        :class:`WorkerBroken` if the child died, or could not take this exchange (then the
        others still go there)."""
        loop = self._attach()
        if self._error is not None or self._closing or loop is None:
            raise WorkerBroken(self._error or ("closed" if self._closing else "no event loop"))
        answer: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._queued.append((exchange, answer))
        if len(self._queued) == 1:
            loop.call_soon(self._send_queued)  # the rest of this turn's flows join the frame
        summary = await answer
        return record_from_summary(exchange, summary), summary

    def close(self) -> None:
        """Let the child finish what it was given, then end (without waiting here)."""
        self._closing = True
        if not self._queued and not self._outgoing:
            self._close_requests()

    # -- the event loop's side --------------------------------------------

    def _attach(self) -> asyncio.AbstractEventLoop | None:
        """Watch the results pipe from the running loop (the first call from inside it)."""
        if self._loop is None and not self._results.closed:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the loop yet: nothing can be waiting
                return None
            self._loop.add_reader(self._results_fd, self._receive)
            self._receive()
        return self._loop

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        if self._error is not None:
            _fail([answer for _, answer in queued], self._error)
            return
        for start in range(0, len(queued), _MAX_BATCH):
            batch = queued[start : start + _MAX_BATCH]
            data, batch = _pickled(batch)
            if batch:
                self._outgoing += _HEADER.pack(len(data))
                self._outgoing += data
                self._waiting.extend(answer for _, answer in batch)
        self._write()

    def _write(self) -> None:
        if self._error is not None or self._requests.closed:
            return
        try:
            written = os.write(self._requests_fd, self._outgoing) if self._outgoing else 0
        except BlockingIOError:
            written = 0
        except OSError as e:  # the child is gone; its results pipe says how
            self._broken(f"writing to it failed: {e}")
            return
        del self._outgoing[:written]
        assert self._loop is not None
        if self._outgoing:
            self._loop.add_writer(self._requests_fd, self._write)
            return
        self._loop.remove_writer(self._requests_fd)
        if self._closing and not self._queued:
            self._close_requests()

    def _receive(self) -> None:
        ended = False
        while True:
            try:
                data = os.read(self._results_fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                self._handle_frames()
                self._broken(f"reading from it failed: {e}")
                return
            if not data:
                ended = True
                break
            self._incoming += data
        self._handle_frames()  # the answers read before an end-of-file count
        if ended:
            self._broken(self._death())

    def _handle_frames(self) -> None:
        while len(self._incoming) >= _HEADER.size:
            size = _HEADER.unpack_from(self._incoming)[0]
            end = _HEADER.size + size
            if len(self._incoming) < end:
                return
            message = pickle.loads(self._incoming[_HEADER.size : end])  # our own child's frames
            del self._incoming[:end]
            self._handle(message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        if message[0] == "ready":
            self._started = True
        elif message[0] == "failed":
            self._broken(message[1])
        else:
            for ok, value in message[1]:
                answer = self._waiting.popleft()
                if answer.done():
                    continue
                if ok:
                    answer.set_result(value)
                else:
                    answer.set_exception(WorkerBroken(value))

    def _broken(self, why: str) -> None:
        """The child is gone: every flow waiting on it fails over to a thread."""
        if self._error is None:
            self._error = why
        _fail([*self._waiting, *(answer for _, answer in self._queued)], self._error)
        self._waiting.clear()
        self._queued.clear()
        self._outgoing.clear()
        self._close_requests()
        if not self._results.closed:
            if self._loop is not None:
                self._loop.remove_reader(self._results_fd)
            self._results.close()

    def _close_requests(self) -> None:
        """End-of-file for the child: it finishes what it has and exits."""
        if not self._requests.closed:
            if self._loop is not None:
                self._loop.remove_writer(self._requests_fd)  # before the number can be reused
            self._requests.close()

    def _death(self) -> str:
        self._process.join(timeout=1)
        code = self._process.exitcode
        if self._closing and code == 0:
            return "closed"
        how = (f"killed by signal {-code}" if code is not None and code < 0
               else f"exit code {code}" if code is not None else "its pipe closed")
        return f"the analysis process stopped ({how})"


def _pickled(batch: list[tuple[Exchange, asyncio.Future[dict[str, Any]]]],
             ) -> tuple[bytes, list[tuple[Exchange, asyncio.Future[dict[str, Any]]]]]:
    """The frame of ``batch``, and what went into it: an exchange that will not pickle
    fails alone (the Inspector analyses it on a thread), the rest still go."""
    try:
        return pickle.dumps([e for e, _ in batch], protocol=pickle.HIGHEST_PROTOCOL), batch
    except Exception:  # find which: pickling each is rare and cheap next to analysing
        kept = []
        for exchange, answer in batch:
            try:
                pickle.dumps(exchange, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:
                _fail([answer], f"cannot hand over: {type(e).__name__}: {e}")
            else:
                kept.append((exchange, answer))
        return pickle.dumps([e for e, _ in kept], protocol=pickle.HIGHEST_PROTOCOL), kept


def _fail(answers: list[asyncio.Future[dict[str, Any]]], why: str) -> None:
    for answer in answers:
        if not answer.done():
            answer.set_exception(WorkerBroken(why))
