"""mitmproxy script: a subset of leakmap's addons, for the overhead breakdown.

    LEAKMAP_BENCH_ADDONS=inspector,review,recorder LEAKMAP_BENCH_QUIET=1 \
        mitmdump -s benchmarks/ablation/leakmap_subset.py ...

``LEAKMAP_BENCH_ADDONS`` names the addons to load, in leakmap's order (all
three is what ``leakmap addon-path`` loads).  ``inspector_inline`` is the
Inspector with ``Pipeline.process`` called on the event loop instead of in
``asyncio.to_thread``: a what-if, to see what the thread hand-off costs and
buys.  ``LEAKMAP_BENCH_QUIET=1`` raises the ``leakmap`` logger to ERROR, so
the Review addon's per-finding warning lines are not emitted at all.
``LEAKMAP_BENCH_GC_UNFREEZE=1`` undoes the Inspector's ``gc.freeze()`` right
after its ``running`` hook (this script's addons run after it), so full
collections walk the start-up heap again, as before leakmap froze it: a
what-if, to see what the freeze buys.  Only for benchmarks: nothing here
changes leakmap itself.
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
        self._tell(flow)


class UnfreezeHeap:
    """Undo the Inspector's ``gc.freeze()``: loaded last, its ``running`` runs last."""

    def running(self) -> None:
        gc.unfreeze()


_CLASSES = {"inspector": Inspector, "inspector_inline": InlineInspector, "review": Review,
            "recorder": Recorder}
_WANTED = [name.strip() for name in
           os.environ.get("LEAKMAP_BENCH_ADDONS", "inspector,review,recorder").split(",")
           if name.strip()]

if os.environ.get("LEAKMAP_BENCH_QUIET") == "1":
    logging.getLogger("leakmap").setLevel(logging.ERROR)

addons: list[object] = [_CLASSES[name]() for name in _WANTED]
# wired as leakmap's own script does: the Inspector hands analysed flows on
_inspectors = [a for a in addons if isinstance(a, Inspector)]
for _addon in addons:
    for _inspector in _inspectors:
        if isinstance(_addon, Review):
            _inspector.listeners.append(_addon.show)
        elif isinstance(_addon, Recorder):
            _inspector.listeners.append(_addon.record)
if os.environ.get("LEAKMAP_BENCH_GC_UNFREEZE") == "1":
    addons.append(UnfreezeHeap())
