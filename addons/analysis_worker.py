"""Analysis in a process of its own, so that the proxy keeps its core.

Decoding and classifying a flow is pure Python.  On a thread of the proxy's
process it holds the GIL that mitmproxy's event loop needs for every request,
so each flow under analysis delays the next requests (by up to the
interpreter's 5 ms switch interval at a time) and all of it shares one core.
:class:`AnalysisWorker` runs :meth:`Pipeline.process` in one child process
instead: the event loop only pickles the exchange (tens of microseconds) and
gets the record back, and the analysis runs on another core.

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
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from leakmap.core.exchange import Exchange
from leakmap.core.pipeline import FlowRecord, Pipeline, record_from_summary, record_summary

_pipeline: Pipeline | None = None  # in the child: built once by _build


def _build(settings: dict[str, Any], parent: int) -> None:
    global _pipeline
    from leakmap.wiring import build_pipeline

    _follow_parent(parent)  # the proxy's pid, from the proxy: it may be gone already
    _pipeline = build_pipeline(**settings).pipeline


def _follow_parent(parent: int) -> None:
    """End this process when the proxy is gone (``kill -9`` leaves no one to close the queue)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="leakmap-parent-watch", daemon=True).start()


def _process(exchange: Exchange) -> dict[str, Any]:
    """In the child: the record as plain data (the exchange stays with the parent)."""
    assert _pipeline is not None
    return record_summary(_pipeline.process(exchange))


def _ready() -> bool:
    """In the child: answered once ``_build`` has run, i.e. when the pipeline is built."""
    return _pipeline is not None


def wanted(choice: str) -> bool:
    """Whether ``choice`` (the ``workers`` setting: auto, 0 or 1) means a worker process."""
    if choice == "auto":
        return (os.cpu_count() or 1) >= 2
    return choice == "1"


class AnalysisWorker:
    """One child process running ``Pipeline.process`` on the flows handed to it, in order."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_build, initargs=(settings, os.getpid()))
        self._started = self._pool.submit(_ready)  # done once the child has built its pipeline

    @property
    def ready(self) -> bool:
        """Whether the child has built its pipeline (until then the Inspector uses threads)."""
        return self._started.done() and self.failure is None

    @property
    def failure(self) -> BaseException | None:
        """Why the child could not start or died while starting, once it is known."""
        if not self._started.done():
            return None
        if self._started.cancelled():
            return RuntimeError("start cancelled")
        return self._started.exception()

    async def process(self, exchange: Exchange) -> FlowRecord:
        """The record of ``exchange``; raises ``BrokenProcessPool`` if the child died."""
        summary = await asyncio.get_running_loop().run_in_executor(self._pool, _process, exchange)
        return record_from_summary(exchange, summary)

    def close(self) -> None:
        """Let the child finish what it was given, then end (without waiting here)."""
        self._pool.shutdown(wait=False, cancel_futures=False)
