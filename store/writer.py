"""Writing records off the event loop, and never losing one when the database is away.

:class:`FlowWriter` batches records on a worker thread.  When the database
cannot be written (the server stopped, the disk is full, the file is
locked), the pending batch goes to a :class:`Spill` file instead of being
dropped, and so does everything after it, in order, until the database
answers again; then the spill is replayed and removed, and writing goes on
directly.  ``failing`` says which state the writer is in, so the proxy can
refuse new requests meanwhile (``--on-store-failure=stop``).

A spill left behind by a process that died (or stopped while the database
was still away) is replayed by :func:`replay_leftovers` when the next run
starts on the same database.

Spill files hold what the database would hold (``record_row``), not request
bodies; they are created mode 0600 under ``$LEAKMAP_HOME/spill/<database>/``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from leakmap.core.pipeline import FlowRecord
from leakmap.store.db import (
    database_digest,
    heartbeat,
    leakmap_home,
    process_start,
    record_row,
    write_rows,
)

__all__ = ["FlowWriter", "Spill", "replay_leftovers", "spill_folder", "write_batch"]

log = logging.getLogger(__name__)

Row = dict[str, Any]
UNAVAILABLE = (OperationalError, InterfaceError)  # the database is away, not the data wrong
HEARTBEAT_EVERY = 5.0  # seconds
REPLAY_BATCH = 500


def _reason(error: BaseException) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def spill_folder(url: str) -> Path:
    return leakmap_home() / "spill" / database_digest(url)


class Spill:
    """An append-only JSON-lines file of rows, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, rows: list[Row]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def exists(self) -> bool:
        return self.path.exists()

    def batches(self, size: int = REPLAY_BATCH) -> Iterator[list[Row]]:
        """The rows in order; a line cut short by a crash is skipped."""
        batch: list[Row] = []
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    batch.append(json.loads(line))
                except ValueError:
                    log.warning("leakmap: skipped a damaged line in %s", self.path)
                    continue
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def replay(self, engine: Engine) -> int:
        """Write every row to ``engine`` and remove the file; raises while the store is away.

        Writes replace by (run, flow id), so a replay cut short and repeated
        stores nothing twice.
        """
        written = 0
        for batch in self.batches():
            written += write_batch(engine, batch)
        self.path.unlink()
        return written


def write_batch(engine: Engine, rows: list[Row]) -> int:
    """Write rows; a batch the database refuses for its data is written row by row.

    A row refused on its own is stored without its findings, with the reason
    in ``analysis_error``.  Raises only when the database is unavailable.
    """
    try:
        return write_rows(engine, rows)
    except UNAVAILABLE:
        raise
    except SQLAlchemyError as e:
        log.warning("leakmap: batch refused (%s); writing its flows one by one", _reason(e))
    return sum(_write_alone(engine, row) for row in rows)


def _write_alone(engine: Engine, row: Row) -> int:
    try:
        return write_rows(engine, [row])
    except UNAVAILABLE:
        raise
    except SQLAlchemyError as e:
        problem = f"findings not stored: {_reason(e)}"
    flow = row["flow"]
    bare = {**flow, "finding_count": 0, "analysis_error": "; ".join(
        p for p in (flow.get("analysis_error"), problem) if p)}
    try:
        return write_rows(engine, [{"flow": bare, "findings": []}])
    except UNAVAILABLE:
        raise
    except SQLAlchemyError as e:
        log.error("leakmap: flow %s not stored: %s", flow.get("flow_id"), _reason(e))
        return 0


class FlowWriter:
    """Writes records on a worker thread, in batches, never on the caller's.

    ``submit`` only enqueues.  A batch is committed when it holds
    ``batch_size`` records or ``interval`` seconds have passed, so a crash
    loses at most the last interval.  While the database is away, batches
    go to the spill file, which is replayed once it answers; ``close``
    drains everything that was submitted, to the database or the spill.
    """

    def __init__(self, engine: Engine, run_id: int, interval: float = 0.5, batch_size: int = 500,
                 spill: Spill | None = None,
                 on_state: Callable[[bool, str | None], None] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.engine = engine
        self.run_id = run_id
        self.interval = interval
        self.batch_size = batch_size
        self.spill = spill or Spill(spill_path(engine.url.render_as_string(hide_password=False),
                                               run_id))
        self.on_state = on_state  # called with (failing, why) when the database goes or returns
        self.on_batch = on_batch  # called with the records of each batch once written or spilled
        self.written = 0
        self.spilled = 0
        self.failing = False
        self.last_error: str | None = None
        # submit() only appends (atomic under the GIL): no lock, no wake-up per record; the
        # writer looks once per interval, so the proxy's event loop pays next to nothing
        self._queue: deque[FlowRecord] = deque()
        self._closing = threading.Event()
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="leakmap-writer", daemon=True)
        self._thread.start()

    def submit(self, record: FlowRecord) -> None:
        self._queue.append(record)

    def close(self, timeout: float | None = None) -> int:
        """Write what is pending and stop; the number of records left in the spill file."""
        self._closing.set()
        self._thread.join(timeout)
        return self.spilled if self.spill.exists() else 0

    # ------------------------------------------------------------------ worker

    def _loop(self) -> None:
        closing = False
        while not closing:
            pending: list[FlowRecord] = []
            closing = self._collect(pending)
            rows = self._rows(pending)
            if self.failing and not self._recover():
                self._to_spill(rows)
            elif rows:
                self._write(rows)
            if pending and self.on_batch is not None:
                self.on_batch(len(pending))
            self._beat()
        if self.failing:
            self._recover()
        if self.failing:
            log.error("leakmap: the database is still away (%s); %d records wait in %s and are "
                      "written when a run starts on this database again", self.last_error,
                      self.spilled, self.spill.path)

    def _collect(self, pending: list[FlowRecord]) -> bool:
        """Fill ``pending`` after one interval (at once if a batch is waiting, or on close());
        True once close() was called and nothing is left."""
        if len(self._queue) < self.batch_size:
            self._closing.wait(self.interval)
        while self._queue and len(pending) < self.batch_size:
            pending.append(self._queue.popleft())
        return self._closing.is_set() and not self._queue

    def _rows(self, records: list[FlowRecord]) -> list[Row]:
        rows = []
        for record in records:
            try:
                rows.append(record_row(self.run_id, record))
            except Exception as e:  # a bug must not end the thread that writes every flow
                log.error("leakmap: flow %s not stored: %s: %s", record.exchange.flow_id,
                          type(e).__name__, e)
        return rows

    def _write(self, rows: list[Row]) -> None:
        try:
            self.written += write_batch(self.engine, rows)
        except UNAVAILABLE as e:
            self._to_spill(rows)
            self._set_failing(True, _reason(e))
        except Exception as e:  # not the database being away: keep the rows, say so, go on
            log.error("leakmap: %d records could not be written (%s: %s); kept in %s",
                      len(rows), type(e).__name__, e, self.spill.path)
            self._to_spill(rows)

    def _to_spill(self, rows: list[Row]) -> None:
        if not rows:
            return
        try:
            self.spill.append(rows)
            self.spilled += len(rows)
        except OSError as e:  # nowhere left to keep them: say so loudly, once per batch
            log.error("leakmap: %d records lost: database away and spill file %s not writable: %s",
                      len(rows), self.spill.path, e)

    def _recover(self) -> bool:
        """Replay the spill if the database answers; True when writing directly again."""
        try:
            if self.spill.exists():
                self.written += self.spill.replay(self.engine)
        except UNAVAILABLE as e:
            self.last_error = _reason(e)
            return False
        self.spilled = 0
        self._set_failing(False, None)
        return True

    def _set_failing(self, failing: bool, reason: str | None) -> None:
        if failing == self.failing:
            return
        self.failing, self.last_error = failing, reason
        if failing:
            log.error("leakmap: database cannot be written (%s); records go to %s until it "
                      "answers again", reason, self.spill.path)
        else:
            log.warning("leakmap: database answers again; spilled records written")
        if self.on_state is not None:
            self.on_state(failing, reason)

    def _beat(self) -> None:
        if self.failing or time.monotonic() - self._last_beat < HEARTBEAT_EVERY:
            return
        self._last_beat = time.monotonic()
        try:
            heartbeat(self.engine, self.run_id)
        except SQLAlchemyError as e:
            log.debug("leakmap: heartbeat not written: %s", _reason(e))


def spill_path(url: str, run_id: int) -> Path:
    """Where a live run's spill goes: one file per run and process."""
    return spill_folder(url) / f"run-{run_id}.{os.getpid()}.{process_start(os.getpid()) or 0}.jsonl"


def _owner_alive(path: Path) -> bool:
    """Whether the process named in a spill file's name still runs."""
    parts = path.name.split(".")
    if len(parts) < 4 or not parts[1].isdigit():
        return False
    pid, started = int(parts[1]), parts[2]
    return process_start(pid) == started if started != "0" else False


def replay_leftovers(engine: Engine, url: str) -> int:
    """Replay spill files of dead processes for this database; the rows written.

    A spill that cannot be replayed yet (the store went away again) stays.
    """
    folder = spill_folder(url)
    if not folder.is_dir():
        return 0
    written = 0
    for path in sorted(folder.glob("run-*.jsonl")):
        if _owner_alive(path):
            continue
        try:
            count = Spill(path).replay(engine)
        except UNAVAILABLE as e:
            log.error("leakmap: spill %s not replayed yet: %s", path, _reason(e))
            continue
        written += count
        log.warning("leakmap: replayed %d records left in %s by an earlier process", count, path)
    return written
