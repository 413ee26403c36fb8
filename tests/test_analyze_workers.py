"""``leakmap analyze --workers N`` stores exactly what ``--workers 0`` stores.

Worker processes parse and classify while the main process cuts the
captures into flows, places and writes them; the database (flows, findings,
the run row), the summary line and the error of a damaged capture must not
depend on where parsing and classification ran.  A worker that dies, fails or
is interrupted ends the command cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mitmproxy import dns, io
from mitmproxy.test import tflow

from conftest import BIN, SAMPLES, leakmap_cli

DEVICE = SAMPLES / "redmi-1s.yaml"
IMEI = "865312345678901"
RUN_COLUMNS = ("name", "command", "status", "tool_version", "policy_name", "policy_sha256",
               "device_sha256", "mode", "captures", "geodb", "store_raw")


def _dns_flow() -> tflow.DNSFlow:
    query = tflow.tdnsflow(resp=True)
    query.request.questions = [dns.Question("api.account.xiaomi.com", dns.types.A, dns.classes.IN)]
    query.response.questions = query.request.questions
    query.response.answers = [dns.ResourceRecord("api.account.xiaomi.com", dns.types.A,
                                                 dns.classes.IN, 60, bytes([13, 228, 0, 1]))]
    return query


def _web_flow(index: int) -> tflow.HTTPFlow:
    """A flow with no server address (the DNS answer locates it), some with PII."""
    flow = tflow.tflow(resp=True)
    flow.request.host = flow.request.headers["host"] = "api.account.xiaomi.com"
    flow.server_conn.peername = flow.server_conn.address = None
    flow.request.path = f"/r{index}?imei={IMEI}" if index % 3 == 0 else f"/r{index}"
    flow.request.method = "POST"
    body = {"n": index, "tel": "+91 98123 45678" if index % 5 == 0 else "none",
            "pad": "x" * (400 if index % 7 == 0 else 10)}  # some longer than --max-body
    flow.request.content = json.dumps(body).encode()
    return flow


def _write_capture(path: Path, flows: int, cut: int = 0) -> Path:
    """A flow file: one DNS answer, ``flows`` web flows, one flow id stored twice."""
    web = [_web_flow(index) for index in range(flows)]
    again = _web_flow(10_000)
    again.id = web[10].id  # the same flow saved twice, across a 500-record batch
    with path.open("wb") as handle:
        writer = io.FlowWriter(handle)
        writer.add(_dns_flow())
        for index, flow in enumerate(web):
            writer.add(flow)
            if index == 520:
                writer.add(again)
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])  # the proxy died mid-write
    return path


def _analyze(tmp_path: Path, workers: str, *captures: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    db_file = tmp_path / f"workers-{workers}.db"
    result = leakmap_cli("analyze", *map(str, captures), "--device", str(DEVICE),
                         "--db", f"sqlite:///{db_file}", "--run-name", "same",
                         "--hash-key-file", str(tmp_path / "key"), "--store-raw",
                         "--max-body", "300", "--workers", workers, check=False)
    return db_file, result


def _contents(db_file: Path) -> dict[str, list[dict[str, object]]]:
    """Every stored row, in primary-key order; the run row without times and process."""
    queries = {"runs": f"SELECT {', '.join(RUN_COLUMNS)} FROM runs",
               "flows": "SELECT * FROM flows ORDER BY id",
               "findings": "SELECT * FROM findings ORDER BY id"}
    with sqlite3.connect(db_file) as connection:
        connection.row_factory = sqlite3.Row
        return {table: [dict(row) for row in connection.execute(query)]
                for table, query in queries.items()}


def _other_har(tmp_path: Path) -> Path:
    """A second capture: its flow to the same host must not use the first capture's DNS."""
    entry = {"startedDateTime": "2026-10-01T10:00:00.000Z",
             "request": {"method": "GET", "url": f"https://api.account.xiaomi.com/x?imei={IMEI}",
                         "headers": [{"name": "Host", "value": "api.account.xiaomi.com"}]},
             "response": {"status": 200, "headers": [], "content": {"size": 0}}}
    path = tmp_path / "other.har"
    path.write_text(json.dumps({"log": {"version": "1.2", "entries": [entry]}}))
    return path


def test_workers_store_exactly_what_this_process_stores(tmp_path: Path) -> None:
    captures = (_write_capture(tmp_path / "a.flow", 600), _other_har(tmp_path),
                SAMPLES / "redmi-2014.har")
    (here, here_run), *others = (_analyze(tmp_path, w, *captures) for w in ("0", "1", "2"))
    expected = _contents(here)
    for worker, worker_run in others:
        assert here_run.returncode == worker_run.returncode == 0, worker_run.stderr
        assert here_run.stderr == worker_run.stderr
        assert _contents(worker) == expected
    assert len(expected["flows"]) == 1 + 600 + 1 + 6  # the flow saved twice is stored once
    assert len(expected["findings"]) > 200
    assert {row["request_size"] for row in expected["flows"]} != {0}  # sizes survive the hand-back
    geo_ips = {row["geo_ip"] for row in expected["flows"] if re.search(r"/r\d+", str(row["url"]))}
    assert geo_ips == {"13.228.0.1"}  # located by the capture's DNS answer
    other = next(row for row in expected["flows"] if "/x?imei" in str(row["url"]))
    assert other["geo_ip"] is None  # ... which does not reach the next capture
    assert any(row["truncated"] for row in expected["flows"])  # bodies over --max-body
    assert all(row["raw_value"] for row in expected["findings"])  # --store-raw


def test_a_capture_cut_short_gives_the_same_message_and_store(tmp_path: Path) -> None:
    cut = _write_capture(tmp_path / "cut.flow", 150, cut=20)
    captures = (cut, SAMPLES / "redmi-2014.har")
    (here, here_run), *others = (_analyze(tmp_path, w, *captures) for w in ("0", "1", "2"))
    expected = _contents(here)
    for worker, worker_run in others:
        assert here_run.returncode == worker_run.returncode == 1
        assert "Traceback" not in worker_run.stderr
        assert worker_run.stderr == here_run.stderr
        assert _contents(worker) == expected
    assert here_run.stderr.splitlines()[-1].endswith(
        "(the 150 flows before the damage are stored)")  # the DNS flow and 149 web flows
    assert len(expected["flows"]) == 150 + 6 and expected["runs"][0]["status"] == "incomplete"


def _damage_inside(path: Path, flow_number: int) -> Path:
    """Replace the ``flow_number``-th stored flow by a tnetstring that is no flow."""
    from leakmap.addons.flows import flow_records

    records = list(flow_records(path))
    records[flow_number] = b"5:hello,"  # a string, where a flow's state (a dict) belongs
    path.write_bytes(b"".join(records))
    return path


def test_a_flow_record_damaged_inside_a_capture_is_logged_and_the_rest_read(
        tmp_path: Path) -> None:
    """The workers parse the flows: record 200 of 600, framed as a flow but none mitmproxy
    can read, is logged with its error where it stands, and the flows after it are read,
    alike with or without workers (mitmproxy's reader would stop there: one crafted record
    must not hide the rest of a capture)."""
    damaged = _damage_inside(_write_capture(tmp_path / "bad.flow", 600), 200)
    captures = (damaged, SAMPLES / "redmi-2014.har")
    (here, here_run), *others = (_analyze(tmp_path, w, *captures) for w in ("0", "1", "2"))
    expected = _contents(here)
    assert here_run.returncode == 0, here_run.stderr
    assert len(expected["flows"]) == 1 + 599 + 1 + 6  # DNS, the web flows but one, the record
    unreadable = [row for row in expected["flows"]
                  if str(row["flow_error"]).startswith("unreadable flow record")]
    assert len(unreadable) == 1
    assert "Invalid flow: loaded=b'hello'" in unreadable[0]["flow_error"]
    for worker, worker_run in others:
        assert worker_run.returncode == 0 and worker_run.stderr == here_run.stderr
        assert _contents(worker) == expected


@pytest.mark.parametrize("kept", [0.0, 0.0005, 0.002, 0.2, 0.5, 0.9, 0.99, 0.999, 1.0])
def test_flow_records_read_what_mitmproxys_reader_reads(tmp_path: Path, kept: float) -> None:
    """Cut a two-flow file anywhere: the flows before the cut are mitmproxy's, and a cut
    inside a flow is an error where mitmproxy's reader has one too."""
    from mitmproxy.exceptions import FlowReadException

    from leakmap.addons.flows import exchange_from_flow, read_flow_file

    path = tmp_path / "two.flow"
    with path.open("wb") as handle:
        for flow in (_dns_flow(), _web_flow(3)):
            io.FlowWriter(handle).add(flow)
    data = path.read_bytes()
    path.write_bytes(data[: round(len(data) * kept)])
    theirs: list[object] = []
    with path.open("rb") as handle:
        try:
            theirs.extend(io.FlowReader(handle).stream())
            their_error = False
        except FlowReadException:
            their_error = True
    ours: list[object] = []
    try:
        ours.extend(read_flow_file(path))
        our_error = False
    except ValueError:
        our_error = True
    assert our_error == their_error
    assert ours == [exchange_from_flow(flow) for flow in theirs]  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# failures


def _settings(tmp_path: Path, **changes: object) -> dict[str, object]:
    return {"device": str(DEVICE), "db": f"sqlite:///{tmp_path / 'w.db'}", **changes}


def _locator(tmp_path: Path) -> object:
    from leakmap.wiring import load_settings

    return load_settings(device=str(DEVICE), db=f"sqlite:///{tmp_path / 'w.db'}").locator


def test_a_worker_that_dies_is_one_clean_error(tmp_path: Path) -> None:
    from leakmap.cli.parallel import WorkerFailed, worker_pool

    capture = _write_capture(tmp_path / "a.flow", 300)
    with pytest.raises(WorkerFailed) as failed, worker_pool(_settings(tmp_path), 2) as pool:
        pool.workers[1]._process.kill()
        list(pool.analyser(_locator(tmp_path))(capture))  # type: ignore[arg-type]
    assert "the classifier process stopped unexpectedly (killed by signal 9)" in str(failed.value)
    assert not any(worker._process.is_alive() for worker in pool.workers)


def test_a_worker_that_cannot_start_says_why(tmp_path: Path) -> None:
    from leakmap.cli.parallel import WorkerFailed, worker_pool

    settings = _settings(tmp_path, device=str(tmp_path / "missing.yaml"))
    with pytest.raises(WorkerFailed) as failed, worker_pool(settings, 1) as pool:
        list(pool.analyser(_locator(tmp_path))(SAMPLES / "redmi-2014.har"))  # type: ignore[arg-type]
    assert str(failed.value).startswith("the classifier process could not start: ")
    assert "missing.yaml" in str(failed.value) and "\n" not in str(failed.value)


def test_bad_settings_fail_in_one_line_with_a_worker(tmp_path: Path) -> None:
    result = leakmap_cli("analyze", str(SAMPLES / "redmi-2014.har"), "--workers", "1",
                         "--device", str(tmp_path / "missing.yaml"),
                         "--db", f"sqlite:///{tmp_path / 'x.db'}", check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and "missing.yaml" in lines[0], result.stderr


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(child) for task in tasks.iterdir()
            for child in (task / "children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_leaves_no_worker_behind(tmp_path: Path) -> None:
    # Enough flows that the run is still going half a second after its worker started:
    # 600 were all analysed by then on a quick minute, and the run ended well on its own.
    # The same 600 ten times over (a flow saved again is stored once).
    capture = _write_capture(tmp_path / "a.flow", 600)
    capture.write_bytes(capture.read_bytes() * 10)
    command = [str(BIN / "leakmap"), "analyze", str(capture), "--device", str(DEVICE),
               "--db", f"sqlite:///{tmp_path / 'c.db'}", "--workers", "1"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 30
    while len(children := _children(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # the resource tracker, then the worker
    assert len(children) >= 2, children
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, stderr = process.communicate(timeout=30)
    assert process.returncode != 0 and "Traceback" not in stderr, stderr
    deadline = time.monotonic() + 30  # a worker ends its flow first: slow on a loaded machine
    while any(Path(f"/proc/{child}").exists() for child in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [child for child in children if Path(f"/proc/{child}").exists()]


def test_ctrl_c_while_the_command_line_loads_prints_no_traceback(tmp_path: Path) -> None:
    """Loading the command line takes about half a second; a Ctrl-C in it (here 0.2 and
    0.4 s after the start, while mitmproxy and SQLAlchemy are imported) had printed the cut
    import's traceback.  The capture keeps the run going past its imports, so that a late
    Ctrl-C meets the analysis (click's "Aborted!"), not the interpreter's shutdown."""
    capture = _write_capture(tmp_path / "a.flow", 600)
    command = [str(BIN / "leakmap"), "analyze", str(capture),
               "--db", f"sqlite:///{tmp_path / 'c.db'}", "--workers", "0"]
    for delay in (0.2, 0.4):
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode != 0 and "Traceback" not in stderr, stderr
