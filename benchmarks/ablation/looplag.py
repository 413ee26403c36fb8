"""mitmproxy script: how late the proxy's event loop runs, and what the GC costs.

A task sleeps 1 ms at a time and records by how much each wake-up came late
(``time.monotonic()``, comparable across processes on Linux).  A late timer
means the event loop was busy or could not get the GIL: every request
waiting on that loop was delayed by as much.  A ``gc.callbacks`` hook
records each garbage collection (start, duration, generation); a collection
holds the GIL, so whichever thread runs it stops the event loop too.

At shutdown both go to ``$LEAKMAP_BENCH_LAGFILE`` as JSON
``{"lag": [[monotonic, lag_s], ...], "gc": [[monotonic, seconds, generation], ...],
"frozen": n}``, where ``frozen`` is ``gc.get_freeze_count()`` at shutdown (how
many start-up objects full collections skip; leakmap's Inspector freezes them).
"""

import asyncio
import gc
import json
import os
import time

INTERVAL = 0.001


class LoopLag:
    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.collections: list[tuple[float, float, int]] = []
        self._gc_start = 0.0
        self.task: asyncio.Task | None = None
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.monotonic()
        elif self._gc_start:
            now = time.monotonic()
            self.collections.append((self._gc_start, now - self._gc_start, info["generation"]))
            self._gc_start = 0.0

    async def _probe(self) -> None:
        clock = time.monotonic
        while True:
            before = clock()
            await asyncio.sleep(INTERVAL)
            after = clock()
            self.samples.append((after, max(0.0, after - before - INTERVAL)))

    def running(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._probe())

    def done(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        path = os.environ.get("LEAKMAP_BENCH_LAGFILE")
        if path:
            with open(path, "w") as handle:
                json.dump({"lag": self.samples, "gc": self.collections,
                           "frozen": gc.get_freeze_count()}, handle)


addons = [LoopLag()]
