"""Analysis in a process of its own, so that the proxy keeps its core.

Decoding and classifying a flow is pure Python.  On a thread of the proxy's
process it holds the GIL that mitmproxy's event loop needs for every request,
so each flow under analysis delays the next requests (by up to the
interpreter's 5 ms switch interval at a time) and all of it shares one core.
:class:`AnalysisWorker` runs :meth:`Pipeline.process` in one child process
instead, and the proxy's side of it runs on the event loop alone, with no
thread of its own to take the GIL:

* a finished flow goes over as the state the capture writes too
  (:meth:`AnalysisWorker.submit_flow`): ``addons/handover.py`` takes it once
  and writes the states of a twentieth of a second to both processes as one
  frame, on non-blocking pipes (``loop.add_writer`` finishes a frame the
  pipe could not take at once), with only the start of a giant upload and
  none of a large response sent here.  Every frame costs both processes
  system calls and a wake-up, so not one per flow (one per turn of the loop
  took 3.3 % of the loop's samples, one per 50 ms 0.7 %).  The child makes
  the exchange from the state, as ``leakmap analyze`` does from a flow
  file: the proxy no longer makes one per flow (about 20 µs of its loop);
* when a hook waits for the result (flows saved with ``-w``), the flow's
  exchange goes over instead (:meth:`AnalysisWorker.submit`), at the end of
  the loop's turn;
* each exchange is handed over as a plain future, not a coroutine in a
  task, which cost the loop about 17 µs a flow; a flow handed over as its
  state has no future at all, but a function to call with its answer;
* the child answers each frame with one frame, read by ``loop.add_reader``:
  for exchanges, every record in order, each settling the oldest waiting
  future; for states, only the flows an answer is wanted for
  (``handover.answer_wanted``: those it did not store, and those a listener
  would show, as Review says: with findings, an action or a problem at the
  log levels someone reads, or all where flows are on screen or saved).  A
  quiet flow stored by the child costs the proxy nothing more once handed
  over.  If the child dies, the flows it stored but had not committed are
  written by the proxy: from their answers, or analysed again
  (``remake``).

Once the proxy's run has started, the child also stores what it analysed
(:meth:`AnalysisWorker.store`): it keeps its own
:class:`~leakmap.store.writer.FlowWriter`, so the rows are made and written
outside the proxy's process, whose writer thread would otherwise take the
GIL from the event loop for every batch.  The child reports when its store
fails and recovers (the proxy refuses requests meanwhile in ``stop`` mode),
and on end-of-file writes what is pending, or spills it, before it exits,
also when the proxy was killed.

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
import contextlib
import functools
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from mitmproxy.flow import Flow

from leakmap.addons.flows import exchange_from_state, note_cuts
from leakmap.addons.handover import (
    ANALYSE,
    ENFORCED_KEY,
    STORE,
    Entry,
    Frame,
    OnAnswer,
    PipeOut,
    StateFeed,
    WorkerBroken,
    answer_wanted,
    cut_frame,
    framed,
    read_message,
    whole_bodies,
)
from leakmap.core.exchange import Exchange
from leakmap.core.pipeline import (
    FlowRecord,
    Pipeline,
    mark_enforced,
    record_from_summary,
    record_summary,
)

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!Q")  # the length of the pickled frame that follows
_MAX_BATCH = 64  # exchanges per frame: the child answers a frame once all of it is done
HAND_OVER_S = 0.05  # exchanges wait at most this long to go out together
_READ_SIZE = 1 << 20


# what goes to the child: the exchange, what the proxy did to its request, whether to store it
Handed = tuple[Exchange, dict[str, Any] | None, bool]
Answer = tuple[dict[str, Any], bool]  # the record's summary, and whether the child stored it


# --------------------------------------------------------------------------
# the child


def _serve(settings: dict[str, Any], parent: int, requests: Connection,
           results: Connection) -> None:
    """The child's whole life: build the pipeline, then answer frames until end-of-file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the proxy's; it closes the pipe
    yield_to_the_proxy()
    serving = threading.Event()
    _follow_parent(parent, serving)
    child = _Child(settings, results.fileno())
    try:
        child.answer(requests.fileno(), serving)
    except OSError:  # the proxy closed its ends (a new configuration) or is gone
        pass
    finally:
        child.close_store()


class _Child:
    """The analysis process: its pipeline, and its writer once the run's store is given."""

    def __init__(self, settings: dict[str, Any], results_fd: int) -> None:
        self.settings = settings
        self.results_fd = results_fd
        self.sending = threading.Lock()  # the writer thread reports on the same pipe
        self.writer: Any = None  # a FlowWriter, once the proxy's run has started

    def send(self, message: object) -> None:
        with self.sending:
            _write_frame(self.results_fd, message)

    def answer(self, requests_fd: int, serving: threading.Event) -> None:
        try:
            from leakmap.wiring import build_pipeline

            pipeline = build_pipeline(**self.settings).pipeline
        except BaseException as e:  # reported to the proxy, which goes on with threads
            self.send(("failed", f"{type(e).__name__}: {e}"))
            return
        serving.set()
        self.send(("ready",))
        while (read := read_message(requests_fd)) is not None:
            message, lengths = read
            if message[0] == "store":
                self.open_store(message[1])
            elif message[0] == "analyse":  # exchanges a hook waits for
                self.send(("results", [self._analysed(pipeline, functools.partial(_given, exchange),
                                                      enforced, store)
                                       for exchange, enforced, store in message[1]]))
            else:  # the states of a frame (addons/handover.py)
                states, marks = message
                self.send(("answered", self._analysed_states(pipeline, states, marks,
                                                             iter(lengths))))

    def _analysed_states(self, pipeline: Pipeline, states: list[dict[str, Any]],
                         marks: list[int], lengths: Iterator[int],
                         ) -> list[tuple[int, bool, Any, bool]]:
        """The answers wanted (``answer_wanted``) for the states marked ``ANALYSE``, each
        with its place among them.  The exchange is made from the state, as ``leakmap
        analyze`` makes it from a flow file, with a note for each body the proxy sent only
        the start of."""
        answers = []
        place = -1
        for state, mark in zip(states, marks, strict=True):
            cuts = whole_bodies(state, lengths)
            if not mark & ANALYSE:
                continue
            place += 1

            def exchange(state: dict[str, Any] = state, cuts: list[list[Any]] = cuts) -> Exchange:
                made = exchange_from_state(state)
                if made is None:
                    raise ValueError(f"a {state.get('type')} flow is not analysed")
                note_cuts(made, cuts)
                return made.within(pipeline.classifier.limits.max_body_bytes)

            metadata = state.get("metadata") or {}
            ok, value, stored = self._analysed(pipeline, exchange, metadata.get(ENFORCED_KEY),
                                               bool(mark & STORE))
            if not ok or answer_wanted(mark, value, stored):
                answers.append((place, ok, value, stored))
        return answers

    def _analysed(self, pipeline: Pipeline, exchange: Callable[[], Exchange],
                  enforced: dict[str, Any] | None, store: bool) -> tuple[bool, Any, bool]:
        """One answer: (True, the record's summary, whether it was stored), or (False, why)."""
        try:
            record = pipeline.process(exchange())
            mark_enforced(record, enforced)
            summary = record_summary(record)
        except Exception as e:  # the proxy analyses this one on a thread instead
            return False, f"{type(e).__name__}: {e}", False
        stored = store and self.writer is not None
        if stored:
            self.writer.submit(record)
        return True, summary, stored

    def open_store(self, store: dict[str, Any]) -> None:
        """Write what is analysed from now on to the run ``store`` names (see
        :meth:`AnalysisWorker.store`); if that fails, the proxy goes on writing."""
        try:
            from leakmap.store.db import open_store
            from leakmap.store.writer import FlowWriter

            engine = open_store(store["db"])
            self.writer = FlowWriter(engine, store["run_id"], interval=store["interval"],
                                     on_state=self._store_state, on_batch=self._committed)
        except Exception as e:
            self.send(("store_failed", f"{type(e).__name__}: {e}"))

    def _store_state(self, failing: bool, reason: str | None) -> None:
        with contextlib.suppress(OSError):  # the proxy is gone: nobody to tell
            self.send(("store_state", failing, reason, str(self.writer.spill.path)))

    def _committed(self, count: int) -> None:
        with contextlib.suppress(OSError):
            self.send(("committed", count))

    def close_store(self) -> None:
        """Write or spill what is pending (the proxy stopped, or died), then say so."""
        if self.writer is None:
            return
        spilled = self.writer.close()
        with contextlib.suppress(OSError):
            self.send(("closed", self.writer.written, spilled))


def _given(exchange: Exchange) -> Exchange:
    return exchange


BACKGROUND_NICENESS = 10


def yield_to_the_proxy() -> None:
    """Run this process at a lower priority: forwarding traffic comes before analysing
    it (the analysis is not waited for), so where the cores are busy the scheduler gives
    them to the proxy, the phone's connections and the servers first."""
    with contextlib.suppress(OSError):
        os.nice(BACKGROUND_NICENESS)


def _follow_parent(parent: int, serving: threading.Event) -> None:
    """End this process when the proxy is gone while the pipeline is still being built
    (``kill -9`` leaves no one to close the pipe).  Once it serves, the pipe's end-of-file
    ends it, after its writer has stored what it was given."""

    def watch() -> None:
        while os.getppid() == parent:
            if serving.wait(1.0):
                return
        os._exit(0)

    threading.Thread(target=watch, name="leakmap-parent-watch", daemon=True).start()


def _write_frame(fd: int, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]



# --------------------------------------------------------------------------
# the proxy's side


def wanted(choice: str) -> bool:
    """Whether ``choice`` (the ``workers`` setting: auto, 0 or 1) means a worker process."""
    if choice == "auto":
        return (os.cpu_count() or 1) >= 2
    return choice == "1"


class AnalysisWorker:
    """One child process running ``Pipeline.process`` on the flows handed to it, in order."""

    def __init__(self, settings: dict[str, Any], body_cap: int | None = None,
                 exchange_of: Callable[[Flow], Exchange | None] | None = None,
                 remake: Callable[[Flow], FlowRecord | None] | None = None) -> None:
        """``body_cap``: the bytes of a request body the child scans (it is sent no more of a
        flow's state).  For a record the child stored but did not confirm before it died
        (see :meth:`store`): ``exchange_of`` makes a flow's exchange as the child did, and
        ``remake`` its whole record, for a flow that was not answered."""
        self.body_cap, self.exchange_of, self.remake = body_cap, exchange_of, remake
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
        self._queued: list[tuple[Handed, asyncio.Future[Answer]]] = []
        self._timer: asyncio.Handle | None = None
        # what each answer to come is for, in order: an exchange and its future, or a frame of
        # states (the flows in it, with what to call with their answers)
        self._waiting: deque[tuple[Exchange, asyncio.Future[Answer]] | _Sent] = deque()
        self._idle: list[asyncio.Future[None]] = []  # settled once nothing is waiting
        self.pipe = PipeOut(self._requests_fd, self._broken, self._drained)
        self._incoming = bytearray()
        self._started = False
        self._error: str | None = None
        self._closing = False
        self._storing = False  # the child writes what it analyses from now on
        self.store_problem: str | None = None  # why its store could not be opened
        # while the child's store cannot be written: why, and where its rows go meanwhile
        self.store_failing: tuple[str, str] | None = None
        self._store_closed: asyncio.Future[tuple[int, int] | None] | None = None
        # records the child stored, in its order, until it says they are committed or spilled;
        # if it dies first they go to ``orphaned`` (the proxy's own writer)
        # (an unanswered flow has no summary: its record is made again)
        self._unconfirmed: deque[tuple[Exchange | Flow, dict[str, Any] | None]] = deque()
        self._confirmed_ahead = 0  # confirmed by the child before their answers arrived here
        self._orphaned: Callable[[list[FlowRecord]], None] | None = None

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

    async def process(self, exchange: Exchange, enforced: dict[str, Any] | None = None,
                      urgent: bool = False) -> Answer:
        """:meth:`submit`, awaited."""
        return await self.submit(exchange, enforced, urgent)

    def submit(self, exchange: Exchange, enforced: dict[str, Any] | None = None,
               urgent: bool = False) -> asyncio.Future[Answer]:
        """A future of the summary of ``exchange``'s record as the child sends it
        (``record_from_summary`` makes the record), and whether the child stored it (see
        :meth:`store`); ``enforced`` is what the proxy did to the request.  A plain future,
        not a task: a coroutine and a task per flow cost the event loop more than the rest
        of the hand-over.  ``urgent``: someone waits for it, so it goes out at the end of this
        turn of the loop.  The future fails with :class:`WorkerBroken` if the child died, or
        could not take this exchange (then the others still go there)."""
        loop = self._attach()
        if self._error is not None or self._closing or loop is None:
            raise WorkerBroken(self._error or ("closed" if self._closing else "no event loop"))
        answer: asyncio.Future[Answer] = loop.create_future()
        self._queued.append(((exchange, enforced, self._storing), answer))
        if urgent or len(self._queued) >= _MAX_BATCH:
            self._send_soon(0.0)
        elif self._timer is None:
            self._send_soon(HAND_OVER_S)  # the next flows join the frame
        return answer

    def send_now(self) -> None:
        """Write the exchanges submitted so far now, ahead of any frame given later."""
        if self._queued:
            self._send_queued()

    def submit_flow(self, feed: StateFeed, flow: Flow, wanted: int, on_answer: OnAnswer) -> None:
        """Hand over a finished flow as the state ``feed`` takes of it (the one the capture
        writes): the child makes the exchange.  ``on_answer`` is called with (the summary of
        its record, whether the child stored it), or with why it could not be analysed there
        (:class:`WorkerBroken`: the child died, or failed on it) -- but for a flow the child
        stored, only if ``wanted`` (``ANSWER_*`` marks) asks for it (``answer_wanted``).
        No future: a flow that needs no answer costs the loop nothing more.  The feed must
        have this worker among its readers, and no other."""
        if self._error is not None or self._closing or (self._loop is None and self._attach() is None):
            raise WorkerBroken(self._error or ("closed" if self._closing else "no event loop"))
        feed.take(flow, ANALYSE | (STORE | wanted if self._storing else 0), on_answer)

    def read(self, frame: Frame, entries: list[Entry]) -> None:
        """Hand over the frame of ``entries`` if some are to be analysed here (they carry
        what to call with their answers), with only what the child reads of their bodies."""
        handed = _Sent([(entry.flow, entry.on_answer) for entry in entries
                        if entry.on_answer is not None])
        if not handed.flows:
            return
        if self._error is not None or self._requests.closed:
            handed.fail(self._error or "closed")
            return
        self.pipe.add(cut_frame(frame, self._keep(entries)))
        self._waiting.append(handed)
        self._write()

    @property
    def waiting(self) -> bool:
        """Whether answers are still to come (a frame of states may bring none)."""
        return bool(self._waiting or self._queued)

    def answered(self) -> asyncio.Future[None]:
        """A future settled once no answer is still to come (or the child is gone)."""
        loop = self._attach() or asyncio.get_running_loop()
        idle: asyncio.Future[None] = loop.create_future()
        if self.waiting and self._error is None:
            self._idle.append(idle)
        else:
            idle.set_result(None)
        return idle

    def _keep(self, entries: list[Entry]) -> Callable[[int, str, int], int]:
        """How much of each large body of a frame the child gets: of a request analysed
        here, up to the cap; of the rest (responses: only their size counts), nothing."""
        cap = self.body_cap

        def keep(index: int, part: str, length: int) -> int:
            if part != "request" or entries[index].on_answer is None:
                return 0
            return length if cap is None else min(length, cap)

        return keep

    @property
    def storing(self) -> bool:
        """Whether the child was given a store (:meth:`store`)."""
        return self._storing

    def store(self, store: dict[str, Any], orphaned: Callable[[list[FlowRecord]], None]) -> None:
        """Have the child write the flows handed over from now on: ``{db, run_id, interval}``
        (seconds between commits).  If its store cannot be opened, ``store_problem`` says why
        and the flows come back unstored.  Records it stored but had not committed or spilled
        when it died go to ``orphaned``."""
        loop = self._attach()
        if self._error is not None or self._closing or loop is None:
            return
        self._orphaned = orphaned
        self._send_queued()  # those go unstored
        self.pipe.add(framed(("store", store)))
        self._storing = True
        self._store_closed = loop.create_future()
        self._write()

    @property
    def ended(self) -> bool:
        """Whether the child is gone and has said all it will: :meth:`stored` would not wait.
        A child never given a flow or a store (closed at start-up) has nothing to say."""
        if self._results.closed:
            return True
        return self._loop is None and not self._process.is_alive()

    def stored_by_now(self) -> tuple[int, int] | None:
        """What :meth:`stored` returns, without waiting: None until the child says."""
        if self._store_closed is None or not self._store_closed.done():
            return None
        return self._store_closed.result()

    async def stored(self, timeout: float) -> tuple[int, int] | None:
        """Once closed: (rows written, rows left in its spill file) of the child's writer;
        None if it stored nothing or ended without saying (then its spill, if any, is
        replayed by the next run)."""
        if self._store_closed is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(self._store_closed), timeout)
        except TimeoutError:  # still at it: what it has not confirmed is written here too
            self._orphan()
            return None

    def _confirm(self, count: int) -> None:
        """``count`` more records are committed or spilled by the child (its writer thread may
        say so before the answer that carries them reaches this process)."""
        self._confirmed_ahead += count
        while self._confirmed_ahead and self._unconfirmed:
            self._unconfirmed.popleft()
            self._confirmed_ahead -= 1

    def _orphan(self) -> None:
        """Hand the records the child has not confirmed to the proxy's writer (a record
        written twice replaces itself: nothing is stored twice)."""
        if self._unconfirmed and self._orphaned is not None:
            records = []
            for source, summary in self._unconfirmed:
                record = self._record(source, summary)
                if record is not None:
                    records.append(record)
            self._orphaned(records)
        self._unconfirmed.clear()

    def _record(self, source: Exchange | Flow, summary: dict[str, Any] | None) -> FlowRecord | None:
        if summary is None:  # not answered: analysed again
            return self.remake(source) if self.remake is not None and isinstance(source, Flow) \
                else None
        exchange = self._exchange(source)
        return record_from_summary(exchange, summary) if exchange is not None else None

    def _exchange(self, source: Exchange | Flow) -> Exchange | None:
        if isinstance(source, Exchange):
            return source
        return self.exchange_of(source) if self.exchange_of is not None else None

    def close(self) -> None:
        """Let the child finish (and store) what it was given, then end (without waiting
        here; :meth:`stored` waits for its writer)."""
        if self._queued and self._loop is not None:
            self._send_queued()
        self._closing = True
        if not self._queued and not self.pipe.outgoing:
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

    def _send_soon(self, delay: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = (self._loop.call_soon(self._send_queued) if delay <= 0
                       else self._loop.call_later(delay, self._send_queued))

    def _send_queued(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queued, self._queued = self._queued, []
        if self._error is not None:
            _fail([answer for _, answer in queued], self._error)
            return
        for start in range(0, len(queued), _MAX_BATCH):
            batch = queued[start : start + _MAX_BATCH]
            frame, batch = _pickled(batch)
            if frame is not None and batch:
                self.pipe.add(frame)
                self._waiting.extend((handed[0], answer) for handed, answer in batch)
        self._write()

    def _write(self) -> None:
        if self._error is None and not self._requests.closed:
            self.pipe.write()  # the child is gone if it fails; its results pipe says how

    def _drained(self) -> None:
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
        kind = message[0]
        if kind == "ready":
            self._started = True
        elif kind == "failed":
            self._broken(message[1])
        elif kind == "store_failed":
            self.store_problem = message[1]
        elif kind == "store_state":
            self.store_failing = (message[2], message[3]) if message[1] else None
        elif kind == "committed":
            self._confirm(message[1])
        elif kind == "closed":  # what it left in its spill is replayed by the next run
            self.store_failing = None
            if self._store_closed is not None and not self._store_closed.done():
                self._store_closed.set_result((message[1], message[2]))
        elif kind == "answered":  # a frame of states
            sent = self._waiting.popleft()
            assert isinstance(sent, _Sent)
            self._answer_frame(sent, message[1])
        else:
            for ok, value, stored in message[1]:
                item = self._waiting.popleft()
                assert not isinstance(item, _Sent)
                exchange, answer = item
                if stored:  # kept until the child says it is committed (see _orphan)
                    self._unconfirmed.append((exchange, value))
                if answer.done():
                    continue
                if ok:
                    answer.set_result((value, stored))
                else:
                    answer.set_exception(WorkerBroken(value))
            self._confirm(0)
        if not self._waiting:
            self._settle_idle()

    def _answer_frame(self, sent: _Sent, answers: list[tuple[int, bool, Any, bool]]) -> None:
        """The child's answers for the flows of ``sent``, by their places; a flow without one
        was stored by the child and needs none."""
        by_place = {answer[0]: answer for answer in answers}
        for place, (flow, on_answer) in enumerate(sent.flows):
            answer = by_place.get(place)
            if answer is None:
                self._unconfirmed.append((flow, None))  # kept until committed (see _orphan)
                continue
            _, ok, value, stored = answer
            if stored:
                self._unconfirmed.append((flow, value))
            try:
                on_answer((value, stored) if ok else None, None if ok else WorkerBroken(value))
            except Exception:  # one flow's bug must not cost the others their answers
                log.exception("leakmap: handling the analysis of flow %s failed", flow.id)
        self._confirm(0)

    def _settle_idle(self) -> None:
        idle, self._idle = self._idle, []
        for future in idle:
            if not future.done():
                future.set_result(None)

    def _broken(self, why: str) -> None:
        """The child is gone: every flow waiting on it fails over to a thread."""
        if self._error is None:
            self._error = why
        for item in self._waiting:
            if isinstance(item, _Sent):
                item.fail(self._error)
            else:
                _fail([item[1]], self._error)
        _fail([answer for _, answer in self._queued], self._error)
        self._settle_idle()
        if self._store_closed is not None and not self._store_closed.done():
            self._store_closed.set_result(None)  # its writer's spill is replayed by the next run
        self.store_failing = None  # it no longer writes: nothing to wait for
        self._orphan()
        self._waiting.clear()
        self._queued.clear()
        self.pipe.outgoing.clear()
        self._close_requests()
        if not self._results.closed:
            if self._loop is not None:
                self._loop.remove_reader(self._results_fd)
            self._results.close()

    def _close_requests(self) -> None:
        """End-of-file for the child: it finishes what it has and exits."""
        if not self._requests.closed:
            self.pipe.stop_watching()  # before the number can be reused
            self._requests.close()

    def _death(self) -> str:
        self._process.join(timeout=1)
        code = self._process.exitcode
        if self._closing and code == 0:
            return "closed"
        how = (f"killed by signal {-code}" if code is not None and code < 0
               else f"exit code {code}" if code is not None else "its pipe closed")
        return f"the analysis process stopped ({how})"


@dataclass(slots=True)
class _Sent:
    """The flows of a frame of states handed to the child, with what to call with their
    answers, until it answers."""

    flows: list[tuple[Flow, OnAnswer]]

    def fail(self, why: str) -> None:
        """The child is gone: each flow is told so, on the loop's next turn (not from inside
        the worker's own bookkeeping)."""
        loop = asyncio.get_running_loop()
        for _flow, on_answer in self.flows:
            loop.call_soon(on_answer, None, WorkerBroken(why))


def _pickled(batch: list[tuple[Handed, asyncio.Future[Answer]]],
             ) -> tuple[Frame | None, list[tuple[Handed, asyncio.Future[Answer]]]]:
    """The frame of ``batch``, and what went into it: an exchange that will not pickle
    fails alone (the Inspector analyses it on a thread), the rest still go."""
    try:
        return framed(("analyse", [handed for handed, _ in batch])), batch
    except Exception:  # find which: pickling each is rare and cheap next to analysing
        kept = []
        for handed, answer in batch:
            try:
                pickle.dumps(handed, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:
                _fail([answer], f"cannot hand over: {type(e).__name__}: {e}")
            else:
                kept.append((handed, answer))
        try:
            return framed(("analyse", [handed for handed, _ in kept])), kept
        except Exception as e:  # each pickles alone, not together (memory?): threads take them
            _fail([answer for _, answer in kept], f"cannot hand over: {type(e).__name__}: {e}")
            return None, []


def _fail(answers: list[asyncio.Future[Any]], why: str) -> None:
    for answer in answers:
        if not answer.done():
            answer.set_exception(WorkerBroken(why))
