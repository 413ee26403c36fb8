"""Each finished flow's state, taken once and framed once, for the processes that read it.

Two child processes read the flows a live run finishes: the capture's
writer (``addons/capture_writer.py``) and the analysis process
(``addons/analysis_worker.py``).  Each took its own copy of every flow
before: the capture the flow's state, the analysis an
:class:`~leakmap.core.exchange.Exchange` made on the event loop, each
pickled into frames of its own.  :class:`StateFeed` takes the state once
(``FlowStates``), pickles the states of a twentieth of a second into one
frame (``HAND_OVER_S``, or at once past ``HAND_OVER_BYTES`` of bodies or
``HAND_OVER_FLOWS`` flows), and writes the same bytes to both pipes.  The
analysis process makes the exchange from the state, as ``leakmap analyze``
does from a flow file, so the same flow is judged the same way live and
again from its capture.

A frame is its data's length and how many bodies follow it out of band,
the data, then each body as its lengths and its bytes: a body travels from
the flow's own bytes in the proxy into the buffer its state then holds in
the child, not copied on the way.  The data is a message's pickle (with its
length first) and, for ``("states", marks)``, the states' pickles, one per
flow, pickled as each flow's hooks end (:class:`StateStream`).  The marks
say per state whom it is for (``CAPTURE``, ``ANALYSE``, ``STORE``, and what
to answer), since a flow may be captured and not analysed (its analysis
still to start, or done on a thread) or the reverse (no capture).  Other
messages to the analysis process (a store to open, exchanges a hook waits
for) are frames without states.

:class:`PipeOut` writes frames to a non-blocking pipe from the event loop,
from where they lie (``writev`` of views), finishing what the pipe could not
take at once when it can (``loop.add_writer``).
"""

from __future__ import annotations

import asyncio
import copy
import io
import logging
import os
import pickle
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from mitmproxy import connection, http, version
from mitmproxy.flow import Flow

log = logging.getLogger(__name__)

AS_SENT_REQUEST = "_leakmap_request_as_sent"  # the Request before the Enforcer redacted it
ENFORCED_KEY = "leakmap_enforced"  # what the Enforcer did to the request: {action, rule, policy_sha256}
CAPTURED_KEY = "leakmap_captured"  # in a flow's metadata: it is in the run's capture

CAPTURE, ANALYSE, STORE = 1, 2, 4  # a state's marks in a frame
# and, for one to analyse, what the proxy wants answered of it when it is stored: every flow,
# or those with findings, with an action taken, with an analysis problem (see answer_wanted)
ANSWER_ALL, ANSWER_FINDINGS, ANSWER_ACTION, ANSWER_PROBLEM = 8, 16, 32, 64

HAND_OVER_S = 0.05  # states wait at most this long to go out together
HAND_OVER_BYTES = 1 << 20  # or until this many bytes of bodies wait
HAND_OVER_FLOWS = 64  # or this many flows: the analysis process answers a frame once all is done


class FlowStates:
    """``flow.get_state()`` of HTTP flows, with each connection's state remembered while the
    connection does not change: most of ``get_state``'s time (about 50 of 60 µs) goes to the
    two connections, which keep-alive traffic shares flow after flow.  A connection counts as
    unchanged while every one of its attributes is equal (lists compared by content)."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def connection(self, conn: connection.Connection) -> dict[str, Any]:
        attributes = vars(conn)
        seen = self.known.get(conn.id)
        if seen is not None and seen[0] == attributes:  # compared in C, lists by content
            return seen[1]
        state = conn.get_state()
        if len(self.known) >= _KNOWN_CONNECTIONS:
            self.known.clear()
        # a copy whose lists are copies too: a list changed in place must not go unseen
        self.known[conn.id] = ({k: v.copy() if type(v) is list else v
                                for k, v in attributes.items()}, state)
        return state

    def of_http(self, flow: http.HTTPFlow) -> dict[str, Any]:
        """What ``HTTPFlow.get_state`` gives (mitmproxy 12.2; tests/test_capture.py compares
        the two)."""
        state: dict[str, Any] = {
            "version": version.FLOW_FORMAT_VERSION,
            "type": flow.type,
            "id": flow.id,
            "error": flow.error.get_state() if flow.error else None,
            "client_conn": self.connection(flow.client_conn),
            "server_conn": self.connection(flow.server_conn),
            "intercepted": flow.intercepted,
            "is_replay": flow.is_replay,
            "marked": flow.marked,
            "metadata": _copied(flow.metadata),
            "comment": flow.comment,
            "timestamp_created": flow.timestamp_created,
        }
        backup = flow._backup
        state["backup"] = None if backup is None or backup == state else copy.deepcopy(backup)
        state["request"] = flow.request.get_state()
        state["response"] = flow.response.get_state() if flow.response else None
        state["websocket"] = flow.websocket.get_state() if flow.websocket else None
        return state

    def of(self, flow: Flow) -> dict[str, Any]:
        """The state of ``flow`` as sent by the phone: a request the Enforcer redacted is
        taken as it was before (what left is in the findings' actions), so that judging it,
        live or again from the capture, sees the original."""
        sent = getattr(flow, AS_SENT_REQUEST, None)
        if sent is not None:
            original, flow = flow, flow.copy()
            flow.id = original.id  # the same flow: reanalysis matches it to the stored one
            flow.request = sent  # type: ignore[attr-defined]
            flow.metadata["leakmap_redacted_before_sending"] = True
        return self.of_http(flow) if isinstance(flow, http.HTTPFlow) else flow.get_state()


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_KNOWN_CONNECTIONS = 4096  # remembered connection states; a long run forgets the oldest at once


def _copied(metadata: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``metadata`` that later changes to the flow's cannot reach: ``dict`` where
    every value is a scalar (most flows when they are saved: 0.2 against 5.5 µs), else a
    deep copy, as ``get_state`` makes."""
    if all(type(value) in _SCALARS for value in metadata.values()):
        return dict(metadata)
    return copy.deepcopy(metadata)


def answer_wanted(marks: int, summary: dict[str, Any], stored: bool) -> bool:
    """Whether the analysis process answers for a flow of a frame (``marks``), once analysed
    (``summary``, ``stored`` by it): always if it did not store it (the proxy then does),
    else only as ``marks`` ask.  Most flows need no answer: no listener would do anything
    with it, and each answer costs the proxy's loop."""
    if not stored or marks & ANSWER_ALL:
        return True
    return bool((marks & ANSWER_FINDINGS and summary.get("findings"))
                or (marks & ANSWER_ACTION and summary.get("action", "log") != "log")
                or (marks & ANSWER_PROBLEM and summary.get("analysis_error")))


def body_size(state: dict[str, Any]) -> int:
    """About how many bytes a flow's state holds: its bodies (the rest is small)."""
    size = 0
    for part in (state.get("request"), state.get("response")):
        if isinstance(part, dict) and isinstance(part.get("content"), bytes):
            size += len(part["content"])
    return size


# --------------------------------------------------------------------------
# frames


_FRAME = struct.Struct("!QQ")  # the data's length, and how many bodies follow it
_HEAD = struct.Struct("!Q")  # in the data: the length of the message's pickle
_BODY = struct.Struct("!QQ")  # a body's length here, and the length it had in the flow
_OUT_OF_BAND = 1 << 16  # bodies from this size on
IOV_MAX = 1024  # buffers per writev (Linux's limit)


@dataclass(slots=True)
class Frame:
    """A frame as views to write, its length, and where its out-of-band bodies are: per
    body, the index of its view, the state it belongs to and its part of it."""

    views: list[memoryview]
    size: int
    bodies: list[tuple[int, int, str]]


def framed(message: object) -> Frame:
    """The frame of ``message``: a ``(states, marks)`` message as :class:`StateStream`
    frames it, any other as its pickle alone."""
    if isinstance(message, tuple) and len(message) == 2 and isinstance(message[0], list):
        stream = StateStream()
        for state in message[0]:
            stream.add(state)
        return stream.frame(message[1])
    head = pickle.dumps(message, protocol=5)
    views = [memoryview(_FRAME.pack(_HEAD.size + len(head), 0)), memoryview(_HEAD.pack(len(head))),
             memoryview(head)]
    return Frame(views, sum(len(view) for view in views), [])


class StateStream:
    """The states of one frame, each pickled as soon as it is complete, into one stream.

    Pickled while its objects are still in the processor's caches: the same
    states pickled together 50 ms later, after mitmproxy's own work for the
    requests in between, cost several times more.  One pickler for the whole
    stream: its memo keeps an object shared by several states (a keep-alive
    connection's state) once, and the reader's single unpickler resolves it.
    Large bodies go out of band, the states themselves unchanged."""

    def __init__(self) -> None:
        self.data = io.BytesIO()
        self.buffers: list[pickle.PickleBuffer] = []
        self.places: list[tuple[int, str]] = []  # of each out-of-band body: its state, part
        self.pickler = pickle.Pickler(self.data, protocol=5, buffer_callback=self.buffers.append)
        self.count = 0

    def add(self, state: dict[str, Any]) -> None:
        """Pickle ``state`` now; raises if it will not pickle (then the stream is spoilt)."""
        self.pickler.dump(_bodies_apart(state, self.count, self.places))
        self.count += 1

    def frame(self, marks: list[int]) -> Frame:
        """The frame of the states added, one mark each."""
        head = pickle.dumps(("states", marks), protocol=5)
        states = memoryview(self.data.getvalue())  # a copy: no export left on the stream
        views = [memoryview(_FRAME.pack(_HEAD.size + len(head) + len(states), len(self.buffers))),
                 memoryview(_HEAD.pack(len(head))), memoryview(head), states]
        bodies = []
        for buffer, (state_index, part) in zip(self.buffers, self.places, strict=True):
            raw = buffer.raw()
            bodies.append((len(views) + 1, state_index, part))
            views += (memoryview(_BODY.pack(len(raw), len(raw))), raw)
        return Frame(views, sum(len(view) for view in views), bodies)


def cut_frame(frame: Frame, keep: Callable[[int, str, int], int]) -> Frame:
    """``frame`` with each out-of-band body cut to ``keep(state index, part, length)`` bytes:
    what a reader that scans only the start of request bodies needs of it."""
    if not frame.bodies:  # most frames: small flows only
        return frame
    views = list(frame.views)
    for at, state_index, part in frame.bodies:
        raw = views[at]
        kept = keep(state_index, part, len(raw))
        if kept < len(raw):
            views[at - 1] = memoryview(_BODY.pack(kept, len(raw)))
            views[at] = raw[:kept]
    return Frame(views, sum(len(view) for view in views), frame.bodies)


def _bodies_apart(state: dict[str, Any], index: int, places: list[tuple[int, str]]
                  ) -> dict[str, Any]:
    """``state``, with its large request and response bodies as out-of-band buffers (in a
    copy of the dicts that hold them); where each one is goes to ``places``."""
    changed = None
    for part in ("request", "response"):
        message = state.get(part)
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if type(content) is bytes and len(content) >= _OUT_OF_BAND:
            changed = changed or dict(state)
            changed[part] = {**message, "content": pickle.PickleBuffer(content)}
            places.append((index, part))
    return changed or state


def read_message(descriptor: int) -> tuple[Any, list[int]] | None:
    """The message of the next frame on ``descriptor`` (blocking), and the length each of
    its out-of-band bodies had in the flow (a reader may be sent only their start); None at
    end-of-file.  Those bodies are read-only memoryviews in the message."""
    header = read_exactly(descriptor, _FRAME.size)
    if header is None:
        return None
    size, count = _FRAME.unpack(header)
    data = read_exactly(descriptor, size)
    bodies, lengths = [], []
    for _ in range(count if data is not None else 0):
        lengths_here = read_exactly(descriptor, _BODY.size)
        if lengths_here is None:
            return None
        length, had = _BODY.unpack(lengths_here)
        body = read_exactly(descriptor, length)
        if body is None:
            return None
        bodies.append(body)
        lengths.append(had)
    if data is None:
        return None
    with memoryview(data) as view:  # our own parent's frames
        end = _HEAD.size + _HEAD.unpack_from(view)[0]
        message = pickle.loads(view[_HEAD.size:end])
        if message[0] != "states":
            return message, lengths
        states = pickle.Unpickler(io.BytesIO(view[end:]), buffers=bodies)
        return ([states.load() for _ in message[1]], message[1]), lengths


def whole_bodies(state: dict[str, Any], lengths: Iterator[int]) -> list[list[Any]]:
    """Make the out-of-band bodies of ``state`` (one of a message's states, in order, with
    the ``lengths`` :func:`read_message` gave) plain bytes; what was cut of them, as
    ``[where, length in the flow, length kept]`` (the capture reader's notes)."""
    cuts = []
    for part in ("request", "response"):
        message = state.get(part)
        content = message.get("content") if isinstance(message, dict) else None
        if type(content) is memoryview:
            had = next(lengths)
            message["content"] = bytes(content)  # type: ignore[index]
            if len(content) < had:
                cuts.append([f"{part}.content", had, len(content)])
    return cuts


def read_exactly(descriptor: int, size: int) -> bytearray | None:
    """``size`` bytes read into one buffer (a frame of a 300 MB flow is not held twice)."""
    data = bytearray(size)
    view, filled = memoryview(data), 0
    with view:
        while filled < size:
            got = os.readv(descriptor, [view[filled:]])
            if not got:
                return None
            filled += got
    return data


class PipeOut:
    """Frames written to a non-blocking pipe from the event loop, each from where it lies.

    ``on_broken(why)`` is called once writing fails (the child is gone), ``on_drained()``
    each time all that was given is in the pipe."""

    def __init__(self, descriptor: int, on_broken: Callable[[str], None],
                 on_drained: Callable[[], None] = lambda: None) -> None:
        self.descriptor = descriptor
        self.on_broken, self.on_drained = on_broken, on_drained
        self.outgoing: deque[memoryview] = deque()  # the bytes not yet in the pipe
        self.handed = 0  # bytes given so far
        self.sent = 0  # bytes the pipe took so far
        self.loop: asyncio.AbstractEventLoop | None = None
        self.broken = False

    def add(self, frame: Frame) -> None:
        self.outgoing += frame.views
        self.handed += frame.size

    def write(self) -> None:
        """Write what the pipe takes now; the rest when it can take more."""
        if self.broken:
            return
        try:
            written = os.writev(self.descriptor, list(islice(self.outgoing, IOV_MAX))) \
                if self.outgoing else 0
        except BlockingIOError:
            written = 0
        except OSError as e:
            self.fail(f"writing to it failed: {e}")
            return
        self._taken(written)
        loop = self.loop = self.loop or asyncio.get_running_loop()
        if self.outgoing:
            loop.add_writer(self.descriptor, self.write)
            return
        loop.remove_writer(self.descriptor)
        self.on_drained()

    def finish(self) -> None:
        """Write the rest now, blocking (the loop is stopping)."""
        self.stop_watching()
        if self.broken or not self.outgoing:
            return
        os.set_blocking(self.descriptor, True)
        try:
            while self.outgoing:  # blocking: each call takes what it is given
                self._taken(os.writev(self.descriptor, list(islice(self.outgoing, IOV_MAX))))
        except OSError as e:
            self.fail(f"writing to it failed: {e}")

    def fail(self, why: str) -> None:
        if not self.broken:
            self.broken = True
            self.outgoing.clear()
            self.stop_watching()
            self.on_broken(why)

    def stop_watching(self) -> None:
        """Before the descriptor closes: its number may be reused."""
        if self.loop is not None:
            self.loop.remove_writer(self.descriptor)

    def _taken(self, written: int) -> None:
        self.sent += written
        while written and written >= len(self.outgoing[0]):
            written -= len(self.outgoing.popleft())
        if written:
            self.outgoing[0] = self.outgoing[0][written:]


# --------------------------------------------------------------------------
# the feed


class WorkerBroken(RuntimeError):
    """The analysis process is gone or refused a flow."""


# what a flow's analysis gives its reader back: (its summary, whether it was stored), or why
# not (then the proxy analyses it itself)
OnAnswer = Callable[[tuple[dict[str, Any], bool] | None, BaseException | None], None]


@dataclass(slots=True)
class Entry:
    """One flow's state in the frame being gathered, whom it is for (``marks``), and, if it
    is to be analysed, what to call with its answer (if one is wanted: ``answer_wanted``)."""

    flow: Flow
    state: dict[str, Any]
    marks: int = 0
    on_answer: OnAnswer | None = None


class Reader(Protocol):
    """A process that reads frames: :class:`~leakmap.addons.capture_writer.CaptureWriter`,
    :class:`~leakmap.addons.analysis_worker.AnalysisWorker`."""

    def read(self, frame: Frame, entries: list[Entry]) -> None:
        """Take ``frame`` (of ``entries``) if any of them is for this reader."""


class StateFeed:
    """The states of the flows finished in the last twentieth of a second, for ``readers``
    (one capture writer, one analysis process at a time: a retired one is flushed first)."""

    def __init__(self) -> None:
        self.states_of = FlowStates()
        self.readers: list[Reader] = []
        self.entries: list[Entry] = []
        self.waiting_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.stream = StateStream()  # the entries' states, pickled as each is complete
        self.spoilt = False  # a state would not pickle: the frame is made the slow way

    def _pickle_complete(self, upto: int) -> None:
        """Pickle the states of ``entries[:upto]`` not pickled yet: their flows' hooks are
        done, so their marks and metadata are final."""
        if self.spoilt:
            return
        try:
            while self.stream.count < upto:
                self.stream.add(self.entries[self.stream.count].state)
        except Exception:  # a state that will not pickle: found and left out at the flush
            self.spoilt = True

    def take(self, flow: Flow, marks: int, on_answer: OnAnswer | None = None) -> None:
        """Put ``flow``'s state in the coming frame for whom ``marks`` say; its state is taken
        at the first call for it, once for every reader.  ``on_answer``: what to call with
        its analysis."""
        entry: Entry | None = getattr(flow, "_leakmap_entry", None)
        if entry is None:
            if self.waiting_bytes >= HAND_OVER_BYTES or len(self.entries) >= HAND_OVER_FLOWS:
                self.flush()  # the flows before it, with all their marks
            else:
                self._pickle_complete(len(self.entries))
            entry = Entry(flow, self.states_of.of(flow))
            flow._leakmap_entry = entry  # type: ignore[attr-defined]
            self.entries.append(entry)
            self.waiting_bytes += body_size(entry.state)
        entry.marks |= marks
        if marks & CAPTURE:  # as the capture keeps it, whoever took the state first
            entry.state["metadata"][CAPTURED_KEY] = True
        if on_answer is not None:
            entry.on_answer = on_answer
        if self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(HAND_OVER_S, self.flush)

    def flush(self) -> None:
        """Hand the gathered states to the readers now, as one frame."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.entries:
            return
        self._pickle_complete(len(self.entries))
        entries, self.entries, self.waiting_bytes = self.entries, [], 0
        stream, self.stream, spoilt, self.spoilt = self.stream, StateStream(), self.spoilt, False
        for entry in entries:
            del entry.flow._leakmap_entry  # type: ignore[attr-defined]
        if spoilt:
            entries = _picklable(entries)
        if not entries:
            return
        marks = [entry.marks for entry in entries]
        frame = framed(([entry.state for entry in entries], marks)) if spoilt else stream.frame(marks)
        for reader in list(self.readers):
            reader.read(frame, entries)


def _picklable(entries: list[Entry]) -> list[Entry]:
    """``entries`` without those whose state will not pickle (said, and told to whoever waits
    for their analysis: the proxy analyses those itself)."""
    kept = []
    for entry in entries:
        try:
            pickle.dumps(entry.state, protocol=5)
        except Exception as e:
            log.error("leakmap: flow %s cannot be handed over (%s: %s); it is not in the capture",
                      entry.flow.id, type(e).__name__, e)
            if entry.on_answer is not None:  # on the loop's next turn, not from inside a flush
                asyncio.get_running_loop().call_soon(
                    entry.on_answer, None, WorkerBroken(f"cannot hand over: {type(e).__name__}: {e}"))
        else:
            kept.append(entry)
    return kept
