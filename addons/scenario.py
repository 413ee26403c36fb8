"""Scenario: walks the tester through a test protocol and records when each step happened.

With ``leakmap_scenario`` set (``leakmap run --scenario FILE``), the run gets
the scenario's steps; the first starts with the run.  Enter in the proxy's
console (when it has a keyboard) or ``leakmap step next`` from another
terminal ends the current step and starts the next: both write the step's
times to the database, which this addon watches, printing each new step's
instruction.  Reports tie each flow to the step whose times hold it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any

from mitmproxy import ctx

from leakmap.addons import options
from leakmap.addons.inspector import refuse
from leakmap.addons.recorder import Recorder
from leakmap.core.scenario import Scenario, load_scenario
from leakmap.core.yamlsource import ConfigError
from leakmap.store.db import advance_step, create_steps, current_step, end_open_steps

log = logging.getLogger("leakmap")

POLL_S = 0.5


class ScenarioWalk:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.scenario: Scenario | None = None
        self.shown: int | None = None  # the step number last printed
        self.watcher: asyncio.Task[None] | None = None
        self.finished = False

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        options.declare(loader, ("scenario",))

    def configure(self, updated: set[str]) -> None:
        if "leakmap_scenario" not in updated:
            return
        path = ctx.options.leakmap_scenario
        try:
            self.scenario = load_scenario(path) if path else None
        except ConfigError as e:
            refuse(str(e), starting=self.watcher is None)

    def running(self) -> None:
        recorder, scenario = self.recorder, self.scenario
        if scenario is None or self.watcher is not None or recorder.engine is None or recorder.run_id is None:
            return
        create_steps(recorder.engine, recorder.run_id,
                     [(step.number, step.name, step.say) for step in scenario.steps])
        log.warning("leakmap: scenario %s, %d steps: press Enter here, or run `leakmap step next "
                    "--run %s` in another terminal, when a step is done", scenario.name,
                    len(scenario.steps), recorder.run_name)
        self.watcher = asyncio.get_running_loop().create_task(self._watch())
        if sys.stdin is not None and sys.stdin.isatty():
            threading.Thread(target=self._keyboard, name="leakmap-steps", daemon=True).start()

    async def _watch(self) -> None:
        while not self.finished:
            await self._show_current()
            await asyncio.sleep(POLL_S)

    async def _show_current(self) -> None:
        engine, run_id = self.recorder.engine, self.recorder.run_id
        if engine is None or run_id is None or self.scenario is None:
            return
        try:
            step = await asyncio.to_thread(current_step, engine, run_id)
        except Exception as e:  # the store away: the steps are shown when it is back
            log.debug("leakmap: step not read: %s", e)
            return
        if step is None and self.shown is not None:
            self.finished = True
            log.warning("leakmap: scenario %s complete: every step is recorded; stop the proxy "
                        "(Ctrl-C) when the phone is done", self.scenario.name)
        elif step is not None and step["number"] != self.shown:
            self.shown = step["number"]
            self._banner(step)

    def _banner(self, step: dict[str, Any]) -> None:
        assert self.scenario is not None
        total = len(self.scenario.steps)
        expect = self.scenario.steps[step["number"] - 1].expect
        lines = [f"leakmap ===== step {step['number']}/{total}: {step['name']} =====",
                 f"  {step['instruction']}"]
        if expect:
            lines.append(f"  (expect: {expect})")
        lines.append("  Enter when done" + (" (the last step)" if step["number"] == total else ""))
        log.warning("\n".join(lines))

    def _keyboard(self) -> None:
        """Each line typed at the console ends the current step."""
        for _line in sys.stdin:
            engine, run_id = self.recorder.engine, self.recorder.run_id
            if engine is None or run_id is None or self.finished:
                return
            try:
                advance_step(engine, run_id)
            except Exception as e:
                log.error("leakmap: step not advanced: %s", e)

    def done(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        engine, run_id = self.recorder.engine, self.recorder.run_id
        if self.scenario is not None and engine is not None and run_id is not None:
            try:
                end_open_steps(engine, run_id)
            except Exception as e:
                log.error("leakmap: the last step's end not recorded: %s", e)
