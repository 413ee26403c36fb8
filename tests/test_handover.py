"""One state per flow, framed once, read by the capture and the analysis process
(addons/handover.py).

The analysis process now makes each live flow's exchange from the state the
proxy took of it: here that exchange must be the one the proxy would have
made of the flow itself (as the phone sent it), for every kind of flow; and a
real analysis process, fed by a real feed, must answer what it was given, with
only the start of a giant upload sent to it and the cut noted.
"""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from mitmproxy import http
from mitmproxy.test import tflow
from test_flow_records import http_flows

from leakmap.addons.analysis_worker import AnalysisWorker
from leakmap.addons.flows import exchange_from_flow, exchange_from_state
from leakmap.addons.handover import (
    ANSWER_ALL,
    ANSWER_FINDINGS,
    AS_SENT_REQUEST,
    CAPTURE,
    CAPTURED_KEY,
    ENFORCED_KEY,
    FlowStates,
    StateFeed,
)

IMEI = "865312345678901"


def _as_the_child_gets_it(state: dict[str, Any]) -> dict[str, Any]:
    return pickle.loads(pickle.dumps(state, protocol=5))  # type: ignore[no-any-return]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(http_flows())
def test_the_exchange_made_from_a_live_state_is_the_one_made_from_the_flow(
        flow: http.HTTPFlow) -> None:
    state = _as_the_child_gets_it(FlowStates().of(flow))
    assert exchange_from_state(state) == exchange_from_flow(flow)


def test_other_kinds_of_flow_and_a_redacted_request_too() -> None:
    for flow in (tflow.twebsocketflow(), tflow.ttcpflow(), tflow.tudpflow(),
                 tflow.tdnsflow(resp=True), tflow.tflow(resp=True, err=True)):
        state = _as_the_child_gets_it(FlowStates().of(flow))
        assert exchange_from_state(state) == exchange_from_flow(flow), flow.type
    redacted = tflow.tflow(resp=True)
    as_sent = redacted.request.copy()
    as_sent.content = b'{"imei": "%s"}' % IMEI.encode()
    setattr(redacted, AS_SENT_REQUEST, as_sent)
    redacted.request.content = b'{"imei": "[redacted]"}'
    state = FlowStates().of(redacted)
    exchange = exchange_from_state(_as_the_child_gets_it(state))
    assert exchange is not None and IMEI.encode() in exchange.request_body
    assert state["id"] == redacted.id and state["metadata"]["leakmap_redacted_before_sending"]
    assert b"redacted" in (redacted.request.content or b"")  # the live flow is untouched


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAKMAP_HOME", str(tmp_path / "home"))  # the child inherits it


def _answer_of(worker: AnalysisWorker, feed: StateFeed, flow: http.HTTPFlow,
               wanted: int = ANSWER_ALL) -> asyncio.Future[Any]:
    """A future of what the worker calls back with for ``flow``."""
    answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def on_answer(got: Any, problem: BaseException | None) -> None:
        if problem is not None:
            answer.set_exception(problem)
        else:
            answer.set_result(got)

    worker.submit_flow(feed, flow, wanted, on_answer)
    return answer


async def _ready(worker: AnalysisWorker) -> None:
    deadline = time.monotonic() + 60
    while not worker.ready and worker.failure is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert worker.ready, worker.failure


def _upload(body: bytes, response: bytes = b"ok") -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    flow.request.host, flow.request.method = "api.account.xiaomi.com", "POST"
    flow.request.headers["content-type"] = "application/json"
    flow.request.raw_content = body
    assert flow.response is not None
    flow.response.raw_content = response
    return flow


def test_a_fed_analysis_process_answers_its_flows_with_only_the_start_of_a_giant_body() -> None:
    """Three flows in one frame: a 300 kB upload (the child gets its first 4,096 bytes and
    notes the cut), a small one the Enforcer blocked (what it did travels in the state's
    metadata), and one for the capture only (no answer is due for it)."""
    giant = b'{"imei": "%s", "pad": "%s"}' % (IMEI.encode(), b"x" * 300_000)
    blocked = _upload(b'{"imei": "%s"}' % IMEI.encode())
    blocked.metadata[ENFORCED_KEY] = {"action": "block", "rule": "no imei", "policy_sha256": "0"}
    flows = [_upload(giant, response=b"r" * 200_000), blocked, _upload(b"{}")]

    async def scenario() -> list[dict[str, Any]]:
        feed = StateFeed()
        worker = AnalysisWorker({}, body_cap=4096)
        feed.readers.append(worker)
        await _ready(worker)
        answers = [_answer_of(worker, feed, flow) for flow in flows[:2]]
        feed.take(flows[2], CAPTURE)
        assert len(worker.pipe.outgoing) == 0  # gathered, not yet sent
        feed.flush()
        assert worker.pipe.handed < 100_000  # the response and most of the upload stay here
        done = await asyncio.wait_for(asyncio.gather(*answers), timeout=30)
        worker.close()
        return [summary for summary, _stored in done]

    giant_summary, blocked_summary = asyncio.run(scenario())
    assert [f["data_type"] for f in giant_summary["findings"]] == ["imei"]
    assert giant_summary["truncated"]
    assert "only the first 4096 scanned" in (giant_summary["analysis_error"] or "")
    assert blocked_summary["action"] == "block" and blocked_summary["enforced"]
    assert CAPTURED_KEY not in flows[0].metadata  # marking the capture is the Capture's job


def test_flows_with_long_messages_go_over_as_their_cut_exchange_after_the_flows_before() -> None:
    """A TCP or WebSocket flow carries its messages inline in its state: past 1 MB in all it
    goes over as its exchange (cut to the cap), written after the frame of the flows that
    finished before it, so that the analysis process still sees flows in order."""
    from leakmap.addons.inspector import _small_messages
    from leakmap.core.exchange import Exchange

    small_tcp, long_tcp, long_websocket = tflow.ttcpflow(), tflow.ttcpflow(), tflow.twebsocketflow()
    long_tcp.messages[0].content = b"x" * (2 << 20)
    assert long_websocket.websocket is not None
    long_websocket.websocket.messages[0].content = b"x" * (2 << 20)
    assert _small_messages(small_tcp) and _small_messages(tflow.tflow(resp=True))
    assert not _small_messages(long_tcp) and not _small_messages(long_websocket)

    async def scenario() -> list[dict[str, Any]]:
        feed = StateFeed()
        worker = AnalysisWorker({}, body_cap=4096)
        feed.readers.append(worker)
        await _ready(worker)
        first = _answer_of(worker, feed, _upload(b'{"imei": "%s"}' % IMEI.encode()))
        feed.flush()
        second = worker.submit(Exchange(flow_id="long", kind="tcp", timestamp=0.0,
                                        host="api.account.xiaomi.com"))
        worker.send_now()
        assert not worker._queued and worker._waiting[1][0].flow_id == "long"  # type: ignore[index,union-attr]
        done = await asyncio.wait_for(asyncio.gather(first, second), timeout=30)
        worker.close()
        return [summary for summary, _stored in done]

    first, second = asyncio.run(scenario())
    assert [f["data_type"] for f in first["findings"]] == ["imei"] and not second["findings"]


def test_a_flow_the_child_stored_is_answered_only_if_wanted(tmp_path: Path) -> None:
    """With the run's store given to the child, a flow it stored is answered only if what
    the proxy wants (here: flows with findings) holds; a quiet one is not, yet the proxy
    knows when all are done (``answered``), and every flow is in the store."""
    from sqlalchemy import text

    from leakmap.store.db import open_store, start_run

    url = f"sqlite:///{tmp_path / 'run.db'}"
    engine = open_store(url)
    run_id = start_run(engine, "handover", "run", "0")
    leaky, quiet = _upload(b'{"imei": "%s"}' % IMEI.encode()), _upload(b'{"event": "open"}')
    called: list[str] = []

    async def scenario() -> None:
        feed = StateFeed()
        worker = AnalysisWorker({}, body_cap=4096)
        feed.readers.append(worker)
        await _ready(worker)
        worker.store({"db": url, "run_id": run_id, "interval": 0.05}, lambda records: None)
        for flow in (leaky, quiet):
            worker.submit_flow(feed, flow, ANSWER_FINDINGS,
                               lambda got, problem, flow=flow: called.append(flow.id))
        feed.flush()
        assert worker.waiting
        await asyncio.wait_for(worker.answered(), timeout=30)
        assert not worker.waiting
        worker.close()
        assert await worker.stored(30) == (2, 0)  # both written, none left in a spill file

    asyncio.run(scenario())
    assert called == [leaky.id]
    with engine.connect() as connection:
        stored = {row[0] for row in connection.execute(text("SELECT flow_id FROM flows"))}
    assert stored == {leaky.id, quiet.id}


def test_a_state_that_will_not_pickle_leaves_the_frame_to_the_others() -> None:
    """Each state is pickled as soon as its flow's hooks are done; one that will not pickle
    (an addon's object in its metadata) is left out at the flush, its analysis is handed
    back to the proxy, and the other states still make one readable frame."""
    import os
    import threading

    from leakmap.addons.handover import ANALYSE, Entry, Frame, WorkerBroken, read_message

    frames: list[tuple[Frame, list[Entry]]] = []

    class Reader:
        def read(self, frame: Frame, entries: list[Entry]) -> None:
            frames.append((frame, entries))

    flows = [_upload(b'{"n": %d}' % n) for n in range(3)]
    flows[1].metadata["addon"] = lambda: None  # copied with the state, never pickled
    problems: list[BaseException | None] = []

    async def scenario() -> None:
        feed = StateFeed()
        feed.readers.append(Reader())
        for flow in flows:
            feed.take(flow, CAPTURE | ANALYSE, lambda _got, problem: problems.append(problem))
        feed.take(flows[2], CAPTURE)  # its marks still change: not pickled yet
        assert feed.stream.count == 1 and feed.spoilt  # the first pickled, the second not
        feed.flush()
        await asyncio.sleep(0)  # the refused flow is told on the loop's next turn

    asyncio.run(scenario())
    assert len(problems) == 1 and isinstance(problems[0], WorkerBroken)
    (frame, entries), = frames
    assert [entry.flow for entry in entries] == [flows[0], flows[2]]
    read, write = os.pipe()
    writer = threading.Thread(target=lambda: [os.write(write, view) for view in frame.views])
    writer.start()
    got = read_message(read)
    writer.join()
    os.close(read)
    os.close(write)
    assert got is not None
    (states, marks), _lengths = got
    assert marks == [CAPTURE | ANALYSE] * 2
    assert [state["id"] for state in states] == [flows[0].id, flows[2].id]
    assert states[1]["metadata"][CAPTURED_KEY] is True
