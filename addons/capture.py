"""Capture: every live run keeps its raw traffic as a mitmproxy flow file.

The file goes to ``--capture-dir`` (default: a ``captures/`` folder beside an
SQLite database; a PostgreSQL database needs the option), named after the
run, created mode 0600: it holds the raw traffic, personal data included.
The run's row records its path at once and its SHA-256 when the proxy stops,
so ``leakmap reanalyze``, ``export`` and ``diff`` can read it and check that
it is unchanged.

Flows are written as they finish, independently of their analysis: the
event loop takes each flow's state (plain data) and hands it to a process of
its own (``addons/capture_writer.py``), which turns it into the file's bytes
and writes them, a twentieth of a second of flows at a time.  With
``--workers 0``, or if that process cannot start or dies, the event loop
serialises each flow and a thread writes the bytes.  A request that the Enforcer redacted
is saved as the phone sent it (what left is in the database's findings'
actions), so that judging the run again sees the original.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import threading
from pathlib import Path
from typing import BinaryIO

from mitmproxy import ctx, http
from mitmproxy.flow import Flow
from sqlalchemy.engine import make_url

from leakmap.addons import options
from leakmap.addons.analysis_worker import wanted
from leakmap.addons.capture_writer import CaptureWriter, complete_length
from leakmap.addons.flows import OpenFlows, tnetstring_dumps
from leakmap.addons.handover import CAPTURE, CAPTURED_KEY, StateFeed
from leakmap.addons.inspector import refuse
from leakmap.addons.recorder import Recorder
from leakmap.core.digest import file_sha256
from leakmap.store.db import default_db_url, leakmap_home, set_run_captures

log = logging.getLogger(__name__)

_STOP = None


def capture_folder(setting: str, db_url: str) -> Path | None:
    """Where a run's capture goes: the setting, else beside an SQLite file; None: no capture.
    Raises ValueError for a database with no folder of its own."""
    if setting.strip().lower() == "none":
        return None
    if setting:
        return Path(setting).expanduser()
    url = make_url(db_url or default_db_url())
    if url.get_backend_name() != "sqlite":
        raise ValueError(f"a {url.get_backend_name()} database has no folder for the run's capture: "
                         "give --capture-dir (or --capture-dir none to keep no capture)")
    database = url.database
    if not database or database == ":memory:":
        return leakmap_home() / "captures"
    return Path(database).expanduser().resolve().parent / "captures"


def capture_file(folder: Path, run_name: str) -> Path:
    """A new file for ``run_name`` in ``folder`` (0700), never one that exists."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", run_name).strip("._") or "run"
    for number in range(1000):
        path = folder / (f"{stem}.flow" if number == 0 else f"{stem}-{number}.flow")
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            continue
        return path
    raise OSError(f"no free capture file name for {run_name!r} in {folder}")


_HAND_OVER_S = 0.1  # a crash loses at most this much of the capture (the store: flush_ms)
_HAND_OVER_BYTES = 1 << 20


class Capture:
    def __init__(self, recorder: Recorder, feed: StateFeed | None = None) -> None:
        self.recorder = recorder
        # takes each flow's state once, for this capture and the analysis process (the
        # Inspector's, shared by the script)
        self.feed = feed if feed is not None else StateFeed()
        self.path: Path | None = None
        self.states: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.process: CaptureWriter | None = None  # writes the file while it lives
        self.write_error: str | None = None  # why the thread could not write the file
        self.open_flows = OpenFlows()  # saved at a clean stop, as the Inspector records them
        self.saved = 0
        self.pending: list[bytes] = []  # serialised flows not yet handed to the writer
        self.pending_bytes = 0
        self.timer: asyncio.TimerHandle | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        options.declare(loader, ("capture_dir",))  # and reads "workers" (the Inspector's)

    def configure(self, updated: set[str]) -> None:
        if "leakmap_capture_dir" in updated or "leakmap_db" in updated:
            try:
                capture_folder(ctx.options.leakmap_capture_dir, ctx.options.leakmap_db)
            except ValueError as e:
                refuse(f"leakmap_capture_dir: {e}", starting=self.thread is None)

    def running(self) -> None:
        recorder = self.recorder
        if self.path is not None or recorder.engine is None or recorder.run_id is None:
            return
        try:
            folder = capture_folder(ctx.options.leakmap_capture_dir, ctx.options.leakmap_db)
            if folder is None:
                return
            self.path = capture_file(folder, recorder.run_name or "run")
            set_run_captures(recorder.engine, recorder.run_id, [{"path": str(self.path), "sha256": None}])
        except (OSError, ValueError) as e:
            log.error("leakmap: cannot keep the run's capture: %s", e)
            ctx.master.shutdown()
            return
        if not wanted(ctx.options.leakmap_workers):  # no processes of leakmap's own: threads
            self._start_thread()
        else:
            try:
                self.process = CaptureWriter(self.path)
                self.feed.readers.append(self.process)
            except OSError as e:  # no process to be had: this one writes it
                log.warning("leakmap: capture process not started (%s); writing it here", e)
                self._start_thread()
        log.info("leakmap: capturing the run's traffic to %s", self.path)

    def _start_thread(self) -> None:
        assert self.path is not None
        self.thread = threading.Thread(target=self._write, args=(self.path,), name="leakmap-capture",
                                       daemon=True)
        self.thread.start()

    def _take_back(self, process: CaptureWriter) -> None:
        """The capture process died: write the file here, from its last whole flow."""
        assert self.path is not None
        self.feed.flush()  # the flows gathered for it are in its leftover then
        self.feed.readers.remove(process)
        self.process = None
        length = complete_length(self.path)
        with self.path.open("r+b") as handle:
            handle.truncate(length)
        log.error("leakmap: the capture process failed (%s); the capture goes on from this "
                  "process, and may miss the flows handed to it in its last moments",
                  process.failure)
        self._start_thread()
        for state in process.leftover:
            self._queue_bytes(tnetstring_dumps(state))

    def _save(self, flow: Flow) -> None:
        self.open_flows.discard(flow)
        if (self.thread is None and self.process is None) or flow.metadata.get(CAPTURED_KEY):
            return
        flow.metadata[CAPTURED_KEY] = True
        self.saved += 1
        process = self.process
        if process is not None and process.failure is not None:
            self._take_back(process)  # its leftover is written first
        elif process is not None:
            self.feed.take(flow, CAPTURE)  # as the phone sent it (StateFeed.take)
            return
        # Serialised here, on the event loop: ~0.1 ms of Python for a small flow. On the writer
        # thread it took the GIL from the loop for up to the 5 ms switch interval at a time,
        # which cost more; the thread only writes the bytes (a system call, without the GIL).
        self._queue_bytes(tnetstring_dumps(self.feed.states_of.of(flow)))

    def _queue_bytes(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_bytes += len(data)
        # one hand-over to the writer per tenth of a second (or megabyte), not one per flow:
        # each wakes the thread, which then wants the GIL back from the loop
        if self.pending_bytes >= _HAND_OVER_BYTES:
            self._hand_over()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(_HAND_OVER_S, self._hand_over)

    def _hand_over(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            self.states.put(b"".join(self.pending))
            self.pending.clear()
            self.pending_bytes = 0

    def _write(self, path: Path) -> None:
        try:
            with path.open("ab", buffering=0) as handle:
                self._write_until_stop(handle)
        except OSError as e:  # a full disk, a folder gone: said once; the rest is dropped
            self.write_error = f"{type(e).__name__}: {e}"
            log.error("leakmap: the capture %s cannot be written (%s); the run's flows are still "
                      "stored in the database, but the capture misses them from here on",
                      path, self.write_error)
            while self.states.get() is not _STOP:  # nothing may pile up in memory
                continue

    def _write_until_stop(self, handle: BinaryIO) -> None:
        while (data := self.states.get()) is not _STOP:
            parts = [data]
            while len(parts) < 256 and not self.states.empty():  # what came meanwhile, at once
                more = self.states.get()
                if more is _STOP:
                    handle.write(b"".join(parts))
                    return
                parts.append(more)
            handle.write(b"".join(parts))

    def _started(self, flow: Flow) -> None:
        if self.path is not None:
            self.open_flows.add(flow)

    request = tcp_start = udp_start = dns_request = _started

    def _http_done(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:  # a WebSocket's flow is saved when it ends
            self._save(flow)

    response = error = _http_done
    http_connect_error = websocket_end = tcp_end = udp_end = dns_response = dns_error = _save

    def done(self) -> None:
        if self.path is None:
            return
        for flow in self.open_flows.drain():  # still open: saved as they are, as recorded
            self._save(flow)
        self.feed.flush()
        process = self.process
        if process is not None:
            process.close()
            if process.failure is not None:
                self._take_back(process)
            self.process = None
        if self.thread is not None:
            self._hand_over()
            self.states.put(_STOP)
            self.thread.join()
            self.thread = None
        digest = file_sha256(self.path)
        recorder = self.recorder
        if recorder.engine is not None and recorder.run_id is not None:
            try:
                set_run_captures(recorder.engine, recorder.run_id,
                                 [{"path": str(self.path), "sha256": digest}])
            except Exception as e:  # the capture is on disk; its hash is logged instead
                log.error("leakmap: capture %s (sha256 %s) not recorded: %s", self.path, digest, e)
        log.info("leakmap: capture %s: %d flows, sha256 %s", self.path, self.saved, digest)
