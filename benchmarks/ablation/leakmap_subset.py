"""mitmproxy script: a subset of leakmap's addons, for the overhead breakdown.

    LEAKMAP_BENCH_ADDONS=inspector,review,recorder LEAKMAP_BENCH_QUIET=1 \
        mitmdump -s benchmarks/ablation/leakmap_subset.py ...

``LEAKMAP_BENCH_ADDONS`` names the addons to load, in leakmap's order (all
three is what ``leakmap addon-path`` loads).  ``inspector_inline`` is the
Inspector with ``Pipeline.process`` called on the event loop instead of in
``asyncio.to_thread``: a what-if, to see what the thread hand-off costs and
buys.  ``LEAKMAP_BENCH_QUIET=1`` raises the ``leakmap`` logger to ERROR, so
the Review addon's per-finding warning lines are not emitted at all.
``LEAKMAP_BENCH_GC_FREEZE=1`` calls ``gc.freeze()`` once the proxy runs, so
full collections no longer walk the start-up heap (a what-if).  Only for
benchmarks: nothing here changes leakmap itself.
"""

import gc
import logging
import os

from mitmproxy.flow import Flow

from leakmap.addons.flows import exchange_from_flow
from leakmap.addons.inspector import Inspector
from leakmap.addons.recorder import Recorder
from leakmap.addons.review import Review


class InlineInspector(Inspector):
    """``Inspector._inspect`` with ``Pipeline.process`` called on the event loop.

    Mirrors leakmap's own ``_inspect`` (same ``_pending`` / ``_keep`` steps)
    minus the worker thread; update it if that method changes.
    """

    async def _inspect(self, flow: Flow) -> None:
        exchange = exchange_from_flow(flow) if self._pending(flow) else None
        if exchange is None or self.pipeline is None:
            return
        self._keep(flow, self.pipeline.process(exchange))


_CLASSES = {"inspector": Inspector, "inspector_inline": InlineInspector, "review": Review,
            "recorder": Recorder}
_WANTED = [name.strip() for name in
           os.environ.get("LEAKMAP_BENCH_ADDONS", "inspector,review,recorder").split(",")
           if name.strip()]

if os.environ.get("LEAKMAP_BENCH_QUIET") == "1":
    logging.getLogger("leakmap").setLevel(logging.ERROR)

class FreezeHeap:
    def running(self) -> None:
        gc.collect()
        gc.freeze()


addons = [_CLASSES[name]() for name in _WANTED]
if os.environ.get("LEAKMAP_BENCH_GC_FREEZE") == "1":
    addons.append(FreezeHeap())
