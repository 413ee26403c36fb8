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
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from mitmproxy.addons.save import Save
from mitmproxy.test import taddons, tflow

from leakmap.addons.inspector import Inspector
from leakmap.addons.recorder import Recorder


@contextlib.contextmanager
def _addons(db_file: Path) -> Iterator[tuple[Inspector, Recorder]]:
    """An Inspector (analysing on threads) and its Recorder on ``db_file``, in mitmproxy's
    test master, neither yet ``running``."""
    inspector = Inspector()
    recorder = Recorder(inspector)
    inspector.listeners.append(recorder.record)
    with taddons.context(Save(), inspector, recorder) as context:
        context.configure(inspector, leakmap_db=f"sqlite:///{db_file}", leakmap_workers="0")
        yield inspector, recorder


def _stored_paths(db_file: Path) -> list[str]:
    """The last path segment of each stored flow's URL, in order."""
    with sqlite3.connect(db_file) as connection:
        return [url.rsplit("/", 1)[-1]
                for (url,) in connection.execute("SELECT url FROM flows ORDER BY url")]


def _flow(path: str) -> tflow.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.path = path
    flow.server_conn.peername = ("127.0.0.1", 443)
    return flow


def test_a_flow_analysed_before_the_run_starts_is_written(tmp_path: Path) -> None:
    db_file = tmp_path / "early.db"

    async def scenario() -> None:
        with _addons(db_file) as (inspector, recorder):
            inspector.response(_flow("/early"))
            await inspector.settle()  # analysed and handed over: the run does not exist yet
            assert recorder.writer is None
            recorder.running()
            inspector.response(_flow("/later"))
            await inspector.done()
            await recorder.done()

    asyncio.run(scenario())
    assert _stored_paths(db_file) == ["early", "later"]


def test_the_recorder_waits_for_an_analysis_still_under_way(tmp_path: Path) -> None:
    db_file = tmp_path / "late.db"

    async def scenario() -> None:
        with _addons(db_file) as (inspector, recorder):
            recorder.running()
            await inspector.done()  # nothing under way yet
            inspector.response(_flow("/late"))  # a hook that ran after the Inspector's done
            assert inspector.in_flight
            await recorder.done()

    asyncio.run(scenario())
    assert _stored_paths(db_file) == ["late"]


def test_an_analysis_that_fails_still_records_the_flow_and_says_why(tmp_path: Path) -> None:
    """A bug in the pipeline (payloads never make it raise) must not cost the flow."""
    db_file = tmp_path / "failed.db"

    async def scenario() -> None:
        with _addons(db_file) as (inspector, recorder):
            recorder.running()
            assert inspector.pipeline is not None

            def broken(_exchange: object) -> None:
                raise KeyError("a bug")

            inspector.pipeline.process = broken  # type: ignore[method-assign, assignment]
            inspector.response(_flow("/broken"))
            await inspector.done()
            await recorder.done()

    asyncio.run(scenario())
    with sqlite3.connect(db_file) as connection:
        rows = connection.execute("SELECT url, analysis_error FROM flows").fetchall()
    assert [(url.rsplit("/", 1)[-1], error) for url, error in rows] == [
        ("broken", "analysis failed: KeyError")]
