"""mitmproxy script: how long each leakmap hook takes, per request, inside a live proxy.

    leakmap run ... -s benchmarks/ablation/hooktime.py

Wraps the proxy-side methods of leakmap's addons (and ``exchange_from_flow``)
with a nanosecond timer; at a clean stop it prints one ``HOOKTIME`` line per
method to stderr: calls and microseconds per request (per Inspector
``response``).  A method's time includes what it calls, so the lines overlap.
The wrappers add about half a microsecond per call.  Only for measuring:
nothing here changes leakmap.
"""

import collections
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx
from mitmproxy.addonmanager import traverse

from leakmap.addons import (
    analysis_worker,
    capture,
    capture_writer,
    enforcer,
    handover,
    inspector,
    recorder,
)
from leakmap.addons.dispatch import Leakmap

TOTALS: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])  # name -> [calls, ns]


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            total = TOTALS[name]
            total[0] += 1
            total[1] += time.perf_counter_ns() - started

    return timed


METHODS = {
    inspector.Inspector: ("request", "response", "error", "_answered", "_on_answer", "_finish",
                          "_keep", "_tell"),
    analysis_worker.AnalysisWorker: ("submit", "submit_flow", "read", "_send_queued", "_receive",
                                     "_write"),
    capture.Capture: ("request", "response", "_save"),
    handover.FlowStates: ("of_http", "connection"),
    handover.StateFeed: ("take", "flush"),
    capture_writer.CaptureWriter: ("read",),
    recorder.Recorder: ("request", "record"),
    enforcer.Enforcer: ("request",),
}
for cls, names in METHODS.items():
    for method in names:
        if method in cls.__dict__:
            setattr(cls, method, _timed(f"{cls.__name__}.{method}", cls.__dict__[method]))
inspector.exchange_from_flow = _timed("exchange_from_flow", inspector.exchange_from_flow)


class Report:
    def running(self) -> None:
        # leakmap's script made its one addon (addons/dispatch.py) before this script
        # wrapped the methods: made again, it holds the wrapped ones, and the script's
        # module (the addon mitmproxy calls) is given them
        for addon in traverse(ctx.master.addons.chain):
            one = getattr(addon, "leakmap", None)
            if isinstance(one, Leakmap):
                one.__init__(*one.parts, deferred=one.deferred, defer_while=one.defer_while)
                vars(addon).update(one.hooks)

    def done(self) -> None:
        requests = max(1, TOTALS["Inspector.response"][0])
        for name, (calls, ns) in sorted(TOTALS.items(), key=lambda item: -item[1][1]):
            sys.stderr.write(f"HOOKTIME {name:34s} calls {calls:7d}  us/request "
                             f"{ns / requests / 1000:7.2f}\n")


addons = [Report()]
