"""The Recorder loses no flow to mitmproxy's start-up and shut-down order.

mitmproxy listens before its ``running`` hook reaches the Recorder, so a
flow can be analysed before the run exists; and an analysis can still be
under way when ``done`` reaches the Recorder.  Both used to cost the flow
(the second seen as a rare failure of the SIGKILL test's second run).
These drive the real addons inside mitmproxy's test master, with a real
SQLite store.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from mitmproxy.addons.save import Save
from mitmproxy.test import taddons, tflow

from leakmap.addons.inspector import Inspector
from leakmap.addons.recorder import Recorder


def _addons() -> tuple[Inspector, Recorder]:
    inspector = Inspector()
    recorder = Recorder(inspector)
    inspector.listeners.append(recorder.record)
    return inspector, recorder


def _stored_urls(db_file: Path) -> list[str]:
    with sqlite3.connect(db_file) as connection:
        return [url for (url,) in connection.execute("SELECT url FROM flows ORDER BY url")]


def _flow(path: str) -> tflow.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.path = path
    flow.server_conn.peername = ("127.0.0.1", 443)
    return flow


def test_a_flow_analysed_before_the_run_starts_is_written(tmp_path: Path) -> None:
    db_file = tmp_path / "early.db"

    async def scenario() -> None:
        inspector, recorder = _addons()
        with taddons.context(Save(), inspector, recorder) as context:
            context.configure(inspector, leakmap_db=f"sqlite:///{db_file}", leakmap_workers="0")
            await inspector.response(_flow("/early"))
            await inspector.settle()  # analysed and handed over: the run does not exist yet
            assert recorder.writer is None
            recorder.running()
            await inspector.response(_flow("/later"))
            await inspector.done()
            await recorder.done()

    asyncio.run(scenario())
    assert [url.rsplit("/", 1)[-1] for url in _stored_urls(db_file)] == ["early", "later"]


def test_the_recorder_waits_for_an_analysis_still_under_way(tmp_path: Path) -> None:
    db_file = tmp_path / "late.db"

    async def scenario() -> None:
        inspector, recorder = _addons()
        with taddons.context(Save(), inspector, recorder) as context:
            context.configure(inspector, leakmap_db=f"sqlite:///{db_file}", leakmap_workers="0")
            recorder.running()
            await inspector.done()  # nothing under way yet
            await inspector.response(_flow("/late"))  # a hook that ran after the Inspector's done
            assert inspector.in_flight
            await recorder.done()

    asyncio.run(scenario())
    assert [url.rsplit("/", 1)[-1] for url in _stored_urls(db_file)] == ["late"]
