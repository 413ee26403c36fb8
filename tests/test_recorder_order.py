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
from collections.abc import Callable, Iterator
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


async def _until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_policy_reloads_let_go_of_ended_analysis_processes(tmp_path: Path) -> None:
    """Each policy reload retires the analysis process and starts another. One that has
    ended is let go of at the next reload instead of being kept until the stop, and the
    stop still finds every flow stored."""
    db_file = tmp_path / "reloads.db"
    policies = [tmp_path / f"policy-{index}.yaml" for index in range(3)]
    for index, policy in enumerate(policies):
        policy.write_text(f"extends: default.yaml\nname: reload-{index}\n")
    retired_at_the_end: list[object] = []
    ended: list[object] = []

    async def scenario() -> None:
        inspector = Inspector()
        recorder = Recorder(inspector)
        inspector.listeners.append(recorder.record)
        with taddons.context(Save(), inspector, recorder) as context:
            context.configure(inspector, leakmap_db=f"sqlite:///{db_file}", leakmap_workers="1")
            recorder.running()
            for index, policy in enumerate(policies):
                inspector.response(_flow(f"/before-reload-{index}"))
                await inspector.settle()
                worker = inspector.worker
                assert worker is not None
                context.configure(inspector, leakmap_policy=str(policy))
                await _until(lambda worker=worker: worker.ended)
                ended.append(worker)
            retired_at_the_end.extend(inspector.retired)
            inspector.response(_flow("/after"))
            await inspector.done()
            await recorder.done()

    asyncio.run(scenario())
    assert retired_at_the_end == ended[-1:]  # the two before it were let go of
    assert _stored_paths(db_file) == ["after", "before-reload-0", "before-reload-1",
                                      "before-reload-2"]
    with sqlite3.connect(db_file) as connection:
        assert connection.execute("SELECT status FROM runs").fetchall() == [("completed",)]
