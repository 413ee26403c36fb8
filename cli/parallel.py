"""``leakmap analyze --workers N``: parse and classify in N processes while this one writes.

Reading a flow file is mostly parsing (``addons/flows.py``), and classifying
is pure Python too: both take the GIL, so threads cannot overlap them.  With
workers, this process only cuts the captures into flows
(:func:`~leakmap.cli.captures.capture_items`: a flow file's stored flows
unparsed, a HAR file's exchanges), hands them out in batches of
:data:`BATCH` to the workers in turn, and takes the records back in the same
order.  Each worker parses, classifies and redacts
(:meth:`Pipeline.inspect`), and sends back the record without the flow's
payloads.  This process then places each record (:func:`place`: the locator
learns DNS answers from earlier flows of the capture, so it must see every
flow in capture order) and writes it: the database holds exactly what the
sequential path (``--workers 0``) writes.

Each worker builds its own pipeline from the same settings (a built pipeline
holds native handles and does not pickle).  At most :data:`WINDOW` batches
per worker are in flight, so memory stays bounded and no side can block the
other for good.  The pipes are plain one-way
:class:`~multiprocessing.connection.Connection` objects held by one process
each: when either process dies the other reads end-of-file, so a dead worker
is a one-line error here and a dead parent ends the worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import click

from leakmap.cli.captures import capture_items, read_capture
from leakmap.core.decode import Limits
from leakmap.core.destination import Locator
from leakmap.core.exchange import Exchange
from leakmap.core.pipeline import FlowRecord, Pipeline, place
from leakmap.policies.model import ActionRule

BATCH = 64  # flows per message: amortises pickling
# or fewer, of at most this many bytes: batches in flight (WINDOW per worker) bound the memory
# that giant bodies take (each at most the body cap: capture_items)
BATCH_BYTES = 32 * 2**20
WINDOW = 4  # batches per worker sent and not yet answered
AUTO_MIN_BYTES = 8 * 2**20  # below this the workers' start-up (seconds) costs more than it saves
AUTO_MAX_WORKERS = 2  # this process's share is small: one worker per core, up to two
STOP = object()  # to a sender thread: close the pipe, which tells the worker to finish

type Item = Exchange | bytes  # a HAR file's exchange, or a flow file's stored flow (capture_items)
# per item, from a worker: its record (payloads dropped, not yet placed), None for a flow
# leakmap does not log, or why the capture cannot be read from there on
type Answer = FlowRecord | str | None
type Analyse = Callable[[Path], Iterator[FlowRecord]]  # a capture's records, placed, in order


class WorkerFailed(click.ClickException):
    """A worker process broke or died: one ``Error: ...`` line, no traceback."""


def worker_count(choice: str, captures: Iterable[Path]) -> int:
    """Workers for ``--workers``: a number, or ``auto`` (one per core, at most
    :data:`AUTO_MAX_WORKERS`, on 2+ cores for captures of 8 MB and more; else none)."""
    if choice != "auto":
        return int(choice)
    cores = os.cpu_count() or 1
    size = sum(path.stat().st_size for path in captures)
    return min(cores, AUTO_MAX_WORKERS) if cores >= 2 and size >= AUTO_MIN_BYTES else 0


def in_process(pipeline: Pipeline) -> Analyse:
    """The sequential path: read, classify and place one capture here, in order."""

    def analyse(capture: Path) -> Iterator[FlowRecord]:
        pipeline.locator.start_capture()  # DNS answers of one capture locate only its own flows
        for exchange in read_capture(capture, pipeline.classifier.limits.max_body_bytes):
            yield pipeline.process(exchange)

    return analyse


@contextlib.contextmanager
def worker_pool(settings: dict[str, Any], count: int) -> Iterator[Pool]:
    """A started :class:`Pool` of ``count`` workers for ``build_pipeline(**settings)``;
    ended on the way out."""
    pool = Pool(settings, count)
    try:
        yield pool
    except BaseException:
        pool.close(wait=False)
        raise
    pool.close(wait=True)


class Pool:
    """Worker processes that take batches in turn; records come back in capture order."""

    def __init__(self, settings: dict[str, Any], count: int) -> None:
        _create_hash_key(settings)
        self.keep: int = settings.get("max_body") or Limits.max_body_bytes  # the body cap
        self.workers: list[Worker] = []
        try:
            for _ in range(max(1, count)):
                self.workers.append(Worker(settings))
        except BaseException:
            self.close(wait=False)
            raise

    def analyser(self, locator: Locator, rules: Sequence[ActionRule] = ()) -> Analyse:
        """Records of a capture, placed by ``locator`` (this process's) in capture order and
        judged by the policy's action ``rules``."""

        def analyse(capture: Path) -> Iterator[FlowRecord]:
            locator.start_capture()
            for record in self._inspect(capture):
                yield place(locator, record, rules)

        return analyse

    def close(self, wait: bool) -> None:
        for worker in self.workers:
            worker.close(wait)

    def _inspect(self, capture: Path) -> Iterator[FlowRecord]:
        """Records of ``capture``, not yet placed; a reading error comes after the flows
        before it."""
        pending: deque[Worker] = deque()  # who answers next, in the order batches went out
        reading, turn = capture_items(capture, self.keep), 0
        try:
            while True:
                batch, error, done = _read_batch(reading)
                if batch:
                    worker = self.workers[turn % len(self.workers)]
                    worker.send((str(capture), batch))
                    pending.append(worker)
                    turn += 1
                done = done or error is not None
                while pending and (done or len(pending) >= WINDOW * len(self.workers)):
                    yield from _records(pending.popleft().receive())
                if error is not None:
                    raise error
                if done:
                    return
        except ValueError:  # a damaged flow: the answers to later batches are not for the next capture
            for worker in pending:
                worker.receive()
            raise


def _records(answers: list[Answer]) -> Iterator[FlowRecord]:
    for answer in answers:
        if isinstance(answer, str):  # the capture is damaged here: the flows before it count
            raise ValueError(answer)
        if answer is not None:
            yield answer


# --------------------------------------------------------------------------
# main process side


class Worker:
    """One worker process: batches in, one answer per batch out, in order."""

    def __init__(self, settings: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")  # not fork: this process may hold threads
        self._results, results_end = context.Pipe(duplex=False)
        requests_end, self._requests = context.Pipe(duplex=False)
        self._process = context.Process(target=_serve, args=(settings, requests_end, results_end),
                                        name="leakmap-classify", daemon=True)
        with _sigint_ignored():  # Ctrl-C is this process's to handle; it ends the worker
            self._process.start()
        requests_end.close()
        results_end.close()
        self._outgoing: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._send_error: str | None = None
        self._sender = threading.Thread(target=self._send_all, name="leakmap-send", daemon=True)
        self._sender.start()

    def send(self, message: tuple[str, list[Item]]) -> None:
        """Hand over one batch (pickled and written by the sender thread)."""
        self._outgoing.put(message)

    def receive(self) -> list[Answer]:
        """The answers to the oldest batch not yet answered."""
        try:
            answer = self._results.recv()
        except (EOFError, OSError) as e:
            raise WorkerFailed(self._death()) from e
        if isinstance(answer, str):
            raise WorkerFailed(answer)
        return answer  # type: ignore[no-any-return]

    def close(self, wait: bool) -> None:
        """Stop the worker: let it finish (``wait``) or end it now."""
        self._outgoing.put(STOP)
        if wait:
            self._sender.join(timeout=10)
            self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._results.close()

    def _send_all(self) -> None:
        """Sender thread: pickling and writing overlap with reading the capture."""
        while (message := self._outgoing.get()) is not STOP:
            try:
                self._requests.send(message)
            except Exception as e:  # the worker is gone, or a message would not pickle
                self._send_error = f"{type(e).__name__}: {e}"
                break
        self._requests.close()  # end-of-file: the worker stops, and its end of results closes

    def _death(self) -> str:
        self._process.join(timeout=5)
        code = self._process.exitcode
        how = (f"killed by signal {-code}" if code is not None and code < 0
               else f"exit code {code}" if code is not None else "its pipe closed")
        reason = f"; sending to it failed: {self._send_error}" if self._send_error else ""
        return f"the classifier process stopped unexpectedly ({how}){reason}"


def _read_batch(items: Iterator[Item]) -> tuple[list[Item], Exception | None, bool]:
    """Up to BATCH items or BATCH_BYTES of payloads, the error that cut reading short if one
    did, and whether ``items`` ended."""
    batch: list[Item] = []
    size = 0
    try:
        for item in items:
            batch.append(item)
            size += _payload_bytes(item)
            if len(batch) >= BATCH or size >= BATCH_BYTES:
                return batch, None, False
    except Exception as e:  # raised again once the flows read before it are through
        return batch, e, True
    return batch, None, True


def _payload_bytes(item: Item) -> int:
    """About how much memory ``item`` holds: its stored bytes, or its exchange's payloads,
    URL (twice: the path is part of it) and header fields (a HAR entry's 20 MB URL or
    headers count as a body does)."""
    if isinstance(item, bytes):
        return len(item)
    fields = sum(len(name) + len(value) for name, value in item.request_headers)
    return (len(item.request_body) + sum(len(message.content) for message in item.messages)
            + 2 * len(item.url or "") + fields)


def _create_hash_key(settings: dict[str, Any]) -> None:
    """Create the database's key file before two processes race to create it.

    A failure is left to ``build_pipeline`` in this process, which words it.
    """
    from leakmap.store.db import default_db_url, hash_key_for

    with contextlib.suppress(OSError, ValueError):
        hash_key_for(settings.get("db") or default_db_url(), settings.get("hash_key_file") or None)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the worker starts (milliseconds): it inherits that through exec.

    So a terminal's Ctrl-C, sent to the whole process group, reaches only this
    process, which then ends the worker.  (A blocked signal mask would not do:
    the worker's start resets it.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------
# worker process side


def _serve(settings: dict[str, Any], requests: Connection, results: Connection) -> None:
    """The worker's main function: build the pipeline, answer batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # already so, unless started off the main thread
    from leakmap.wiring import build_pipeline

    try:
        assembled = build_pipeline(**settings)
    except Exception as e:
        _tell(results, f"the classifier process could not start: {e}")
        return
    try:
        _answer(assembled.pipeline, requests, results)
    except (EOFError, BrokenPipeError):  # the main process is done, or has gone
        pass
    except Exception as e:
        _tell(results, f"the classifier process failed: {type(e).__name__}: {e}")
    finally:
        assembled.resolver.close()


def _answer(pipeline: Pipeline, requests: Connection, results: Connection) -> None:
    """Answer batches in order until the main process closes its end (EOFError)."""
    while True:
        capture, batch = requests.recv()
        answers: list[Answer] = []
        for item in batch:
            answers.append(_inspected(pipeline, item, Path(capture)))
            if isinstance(answers[-1], str):  # nothing after a damaged flow is read
                break
        results.send(answers)


def _inspected(pipeline: Pipeline, item: Item, capture: Path) -> Answer:
    from leakmap.addons.flows import exchange_from_record

    if isinstance(item, Exchange):
        exchange: Exchange | None = item
    else:
        try:
            exchange = exchange_from_record(item, capture)
        except ValueError as e:
            return str(e)
    if exchange is None:
        return None
    record = pipeline.inspect(exchange)
    record.exchange = exchange.without_payloads()  # all the main process stores of it
    return record


def _tell(results: Connection, text: str) -> None:
    with contextlib.suppress(OSError):
        results.send(" ".join(text.split()))  # one line
