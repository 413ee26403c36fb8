"""mitmproxy entry script for leakmap.

    mitmdump -s "$(leakmap addon-path)" --set leakmap_policy=policy.yaml --set leakmap_db=URL

Works the same in mitmweb and mitmproxy.  Imports are absolute, from the
installed ``leakmap`` package.
"""

from leakmap.addons.capture import Capture
from leakmap.addons.dispatch import Leakmap
from leakmap.addons.enforcer import Enforcer
from leakmap.addons.handover import StateFeed
from leakmap.addons.inspector import Inspector
from leakmap.addons.recorder import Recorder
from leakmap.addons.review import Review
from leakmap.addons.scenario import ScenarioWalk

feed = StateFeed()  # each finished flow's state, taken once for the analysis and the capture
inspector = Inspector(feed=feed)
review, recorder = Review(), Recorder(inspector)
inspector.listeners += [review.show, recorder.record]  # each analysed flow: marked, then stored
# a flow the analysis process stored is answered only if Review would show something of it
inspector.answers_wanted = review.answers_wanted
parts = [inspector, Enforcer(inspector), review, recorder, ScenarioWalk(recorder),
         Capture(recorder, feed=feed)]
# One addon in mitmproxy's chain, not six: mitmproxy walks every addon for every event.
# A response's work runs in batches, except when flows are saved with -w: then mitmproxy
# waits for each flow's analysis, so that the saved flow carries it (addons/dispatch.py).
leakmap = Leakmap(*parts, deferred={"response"}, defer_while=lambda: not inspector.saving)
# This module is the addon mitmproxy sees, with the one addon's hooks as its own: mitmproxy
# walks a script's module and then its ``addons`` for every event of every request, and the
# walk stops here (about 16 calls a request fewer; docs/performance.md).
globals().update(leakmap.hooks)
