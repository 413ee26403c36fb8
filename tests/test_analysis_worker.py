"""The proxy's side of the analysis process (addons/analysis_worker.py), on a real loop.

A real child process builds a real pipeline (the default policy, no device
profile); these drive the pipe protocol through the awkward orders a proxy
meets: closed with flows in flight while the loop is busy, a child that
cannot start, a flow handed over after close, a flow that will not pickle.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from leakmap.addons.analysis_worker import AnalysisWorker, WorkerBroken
from leakmap.core.exchange import Exchange

IMEI = "865312345678901"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAKMAP_HOME", str(tmp_path / "home"))  # the child inherits it


def _exchange(index: int) -> Exchange:
    return Exchange(flow_id=f"f{index}", kind="http", timestamp=0.0,
                    url=f"https://api.example.cn/v1?n={index}", method="POST", host="api.example.cn",
                    request_headers=[("content-type", "application/json")],
                    request_body=b'{"imei": "%s"}' % IMEI.encode())


async def _started(settings: dict[str, Any]) -> AnalysisWorker:
    worker = AnalysisWorker(settings)
    deadline = time.monotonic() + 60
    while not worker.ready and worker.failure is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return worker


def _run(scenario: Any) -> list[str]:
    """Run ``scenario`` on a fresh loop; the errors the loop saw (none expected)."""
    errors: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: errors.append(repr(context.get("exception"))))
        await scenario()

    asyncio.run(main())
    return errors


def test_closing_with_flows_in_flight_answers_every_one_even_on_a_busy_loop() -> None:
    async def scenario() -> None:
        worker = await _started({})
        assert worker.ready, worker.failure
        jobs = [asyncio.ensure_future(worker.process(_exchange(i))) for i in range(6)]
        await asyncio.sleep(0)  # the frame goes out
        worker.close()
        time.sleep(1.5)  # the loop is busy: the answers and the end-of-file arrive together
        done, pending = await asyncio.wait(jobs, timeout=10)
        assert not pending
        summaries = [job.result()[0] for job in done]
        assert all(summary["findings"] and summary["findings"][0]["data_type"] == "imei"
                   for summary in summaries)
        assert not worker.ready  # closed: the Inspector hands it nothing more

    assert _run(scenario) == []


def test_a_child_that_cannot_start_says_why() -> None:
    async def scenario() -> None:
        worker = await _started({"policy": "/nonexistent/policy.yaml"})
        assert not worker.ready
        assert "policy file not found" in str(worker.failure)

    assert _run(scenario) == []


def test_a_flow_handed_over_after_close_is_refused_not_lost() -> None:
    async def scenario() -> None:
        worker = await _started({})
        worker.close()
        with pytest.raises(WorkerBroken, match="closed"):
            await asyncio.wait_for(worker.process(_exchange(0)), timeout=5)

    assert _run(scenario) == []


def test_a_flow_that_will_not_pickle_fails_alone() -> None:
    async def scenario() -> None:
        worker = await _started({})
        broken = _exchange(1)
        broken.request_headers = [("x", lambda: None)]  # type: ignore[list-item]
        jobs = [asyncio.ensure_future(worker.process(e)) for e in (_exchange(0), broken,
                                                                    _exchange(2))]
        results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 30)
        assert isinstance(results[1], WorkerBroken) and "cannot hand over" in str(results[1])
        assert [r[0]["findings"][0]["data_type"] for r in (results[0], results[2])] == ["imei"] * 2
        assert worker.ready and worker.failure is None  # the others still go there
        worker.close()

    assert _run(scenario) == []
