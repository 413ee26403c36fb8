"""``leakmap analyze --workers``: classify in a second process while this one reads.

Reading a flow file and classifying its flows both take the GIL, so threads
cannot overlap them.  With one worker, this process reads the captures and
writes the records, and a worker process runs :meth:`Pipeline.process` on
every flow in capture order.  One worker, not a pool: the locator keeps
per-capture state (DNS answers seen earlier locate later flows), so one
process seeing every flow in order gives exactly the records of the
sequential path.

The worker builds its own pipeline from the same settings (a built pipeline
holds native handles and does not pickle).  Exchanges go out in batches of
:data:`BATCH`; at most :data:`WINDOW` batches are in flight, so memory stays
bounded and neither side can block the other for good.  The two pipes are
plain one-way :class:`~multiprocessing.connection.Connection` objects held
by one process each: when either process dies the other reads end-of-file,
so a dead worker is a one-line error here and a dead parent ends the worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import click

from leakmap.core.exchange import Exchange
from leakmap.core.pipeline import FlowRecord, Pipeline

BATCH = 64  # exchanges per message: amortises pickling
WINDOW = 4  # batches sent and not yet answered
AUTO_MIN_BYTES = 8 * 2**20  # below this a worker's start-up (seconds) costs more than it saves
NEW_CAPTURE = "new capture"  # message: forget the DNS answers of the previous capture
STOP = object()  # to the sender thread: close the pipe, which tells the worker to finish

Classify = Callable[[Iterable[Exchange]], Iterator[FlowRecord]]


class WorkerFailed(click.ClickException):
    """The worker process broke or died: one ``Error: ...`` line, no traceback."""


def worker_count(choice: str, captures: Iterable[Path]) -> int:
    """Workers for ``--workers``: ``0``, ``1``, or ``auto`` (1 on 2+ cores for 8 MB and more)."""
    if choice != "auto":
        return int(choice)
    size = sum(path.stat().st_size for path in captures)
    return 1 if (os.cpu_count() or 1) >= 2 and size >= AUTO_MIN_BYTES else 0


def in_process(pipeline: Pipeline) -> Classify:
    """The sequential path: classify one capture's exchanges here, in order."""

    def classify(exchanges: Iterable[Exchange]) -> Iterator[FlowRecord]:
        pipeline.locator.start_capture()  # DNS answers of one capture locate only its own flows
        for exchange in exchanges:
            yield pipeline.process(exchange)

    return classify


@contextlib.contextmanager
def worker_process(settings: dict[str, Any]) -> Iterator[Worker]:
    """A started :class:`Worker` for ``build_pipeline(**settings)``; ended on the way out."""
    worker = Worker(settings)
    try:
        yield worker
    except BaseException:
        worker.close(wait=False)
        raise
    worker.close(wait=True)


# --------------------------------------------------------------------------
# main process side


class Worker:
    """One worker process running ``Pipeline.process``; records come back in order."""

    def __init__(self, settings: dict[str, Any]) -> None:
        _create_hash_key(settings)
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

    def classify(self, exchanges: Iterable[Exchange]) -> Iterator[FlowRecord]:
        """Records of one capture's exchanges, in order; a reading error comes after them."""
        self._outgoing.put(NEW_CAPTURE)
        pending: deque[list[Exchange]] = deque()
        reading = iter(exchanges)
        while True:
            batch, error = _read_batch(reading)
            if batch:
                self._outgoing.put(batch)
                pending.append(batch)
            done = error is not None or len(batch) < BATCH
            while pending and (done or len(pending) >= WINDOW):
                yield from self._receive(pending.popleft())
            if error is not None:
                raise error
            if done:
                return

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

    def _receive(self, sent: list[Exchange]) -> Iterator[FlowRecord]:
        try:
            answer = self._results.recv()
        except (EOFError, OSError) as e:
            raise WorkerFailed(self._death()) from e
        if isinstance(answer, str):
            raise WorkerFailed(answer)
        for exchange, fields in zip(sent, answer, strict=True):
            yield FlowRecord(exchange=exchange, **fields)

    def _death(self) -> str:
        self._process.join(timeout=5)
        code = self._process.exitcode
        how = (f"killed by signal {-code}" if code is not None and code < 0
               else f"exit code {code}" if code is not None else "its pipe closed")
        reason = f"; sending to it failed: {self._send_error}" if self._send_error else ""
        return f"the classifier process stopped unexpectedly ({how}){reason}"


def _read_batch(exchanges: Iterator[Exchange]) -> tuple[list[Exchange], Exception | None]:
    """Up to BATCH exchanges, and the error that cut reading short if one did."""
    batch: list[Exchange] = []
    try:
        for exchange in exchanges:
            batch.append(exchange)
            if len(batch) >= BATCH:
                break
    except Exception as e:  # raised again once the flows read before it are through
        return batch, e
    return batch, None


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
        message = requests.recv()
        if message == NEW_CAPTURE:
            pipeline.locator.start_capture()
        else:  # the main process still holds the exchanges: only the rest travels back
            results.send([_without_exchange(pipeline.process(exchange)) for exchange in message])


def _without_exchange(record: FlowRecord) -> dict[str, Any]:
    return {name: value for name, value in vars(record).items() if name != "exchange"}


def _tell(results: Connection, text: str) -> None:
    with contextlib.suppress(OSError):
        results.send(" ".join(text.split()))  # one line
