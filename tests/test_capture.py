"""Every live run keeps its raw capture; any run can be judged again from it."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

import httpx
from mitmproxy import io

from leakmap.core.digest import file_sha256

from conftest import leakmap_cli
from servers import TLSServer

IMEI = "865312345678901"  # samples/redmi-1s.yaml
REDACT = ("extends: default.yaml\n"
          "actions:\n"
          "  - {name: no-imei-to-china, data_types: [imei], watched: true, action: redact}\n")


def _runs(db: str) -> dict[str, dict]:
    return {r["run"]: r for r in json.loads(leakmap_cli("runs", "--db", db, "--format", "json").stdout)}


def _findings(db: str, run: str) -> set[tuple[str, str, str, str]]:
    report = json.loads(leakmap_cli("report", "--db", db, "--run", run, "--format", "json").stdout)
    return {(f["flow_id"], f["field"], f["data_type"], f["action"]) for f in report["findings"]}


def test_a_live_run_keeps_its_capture_and_can_be_judged_again(
        start_proxy, tmp_path: Path, device_file: Path, networks_file: Path) -> None:
    policy = tmp_path / "redact.yaml"
    policy.write_text(REDACT)
    db = f"sqlite:///{tmp_path / 'lab.db'}"
    with TLSServer(tmp_path) as server:
        proxy = start_proxy("--policy", str(policy), "--device", str(device_file), "--db", db,
                            "--run-name", "bench/unit 3", "--networks", str(networks_file))
        context = ssl.create_default_context(cafile=str(proxy.ca))
        with httpx.Client(proxy=proxy.url, verify=context, timeout=20) as client:
            assert client.post(f"https://127.0.0.1:{server.port}/r", json={"imei": IMEI}).status_code == 200
            assert client.get(f"https://127.0.0.1:{server.port}/ok").status_code == 200
        assert proxy.stop() == 0, proxy.output
    assert json.loads(server.received[0][2]) == {"imei": "000000000000000"}  # redacted on the wire

    capture = tmp_path / "captures" / "bench_unit_3.flow"  # beside the database, named after the run
    assert stat.S_IMODE(capture.stat().st_mode) == 0o600
    live = _runs(db)["bench/unit 3"]
    assert live["captures"] == [{"path": str(capture), "sha256": file_sha256(capture)}]
    assert live["settings"]["policy"] == str(policy.resolve())
    with capture.open("rb") as handle:
        flows = list(io.FlowReader(handle).stream())
    assert [f.request.path for f in flows] == ["/r", "/ok"]
    assert json.loads(flows[0].request.content) == {"imei": IMEI}  # what the phone sent
    assert flows[0].metadata["leakmap_redacted_before_sending"] is True

    before = _findings(db, "bench/unit 3")
    assert any(action == "redact" for *_, action in before)
    leakmap_cli("reanalyze", "bench/unit 3", "--db", db, "--run-name", "same-policy")
    assert _findings(db, "same-policy") == before  # the same capture, policy and profile
    default = str(tmp_path / "plain.yaml")
    Path(default).write_text("extends: default.yaml\n")
    leakmap_cli("reanalyze", "bench/unit 3", "--db", db, "--policy", default, "--run-name", "no-actions")
    again = _findings(db, "no-actions")
    assert {f[:3] for f in again} == {f[:3] for f in before} and {f[3] for f in again} == {"log"}
    assert _findings(db, "bench/unit 3") == before  # the old run stays as it was
    assert _runs(db)["no-actions"]["mode"] == "reanalysis of bench/unit 3"

    device_file.write_text(device_file.read_text() + "# edited\n")
    changed = leakmap_cli("reanalyze", "bench/unit 3", "--db", db, check=False)
    assert changed.returncode == 1 and "give --device FILE" in changed.stderr
    leakmap_cli("reanalyze", "bench/unit 3", "--db", db, "--device", str(device_file), "--run-name", "d")


def test_a_postgresql_store_needs_a_capture_folder(tmp_path: Path) -> None:
    result = leakmap_cli("run", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none", "--listen-port",
                         "0", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "give --capture-dir" in result.stderr


def test_flow_states_are_mitmproxy_s_own_even_as_connections_change() -> None:
    from mitmproxy.test import tflow

    from leakmap.addons.handover import FlowStates

    states = FlowStates()
    first, second = tflow.tflow(resp=True), tflow.tflow(resp=True)
    second.client_conn, second.server_conn = first.client_conn, first.server_conn  # keep-alive
    second.metadata["x"] = {"y": [1]}
    for flow in (first, second, tflow.tflow(err=True), tflow.twebsocketflow()):
        assert states.of_http(flow) == flow.get_state()
    saved, plain = states.of_http(second)["metadata"], states.of_http(first)["metadata"]
    second.metadata["x"]["y"].append(2)  # changes after the save do not reach what was saved
    first.metadata["leakmap_captured"] = True
    assert saved == {"x": {"y": [1]}} and "leakmap_captured" not in plain
    first.server_conn.timestamp_end = 1234.5  # the connection closes: its state is read again
    first.server_conn.alpn_offers.append(b"h2")  # a list changed in place
    assert states.of_http(first) == first.get_state()
    first.backup()
    first.request.path = "/changed"
    assert states.of_http(first) == first.get_state()


def test_a_capture_cut_short_by_a_dying_writer_is_taken_back_from_its_last_whole_flow(
        tmp_path: Path) -> None:
    from leakmap.addons.capture_writer import complete_length
    from leakmap.addons.flows import tnetstring_dumps

    whole = [tnetstring_dumps({"id": str(n), "body": b"x" * 100 * n}) for n in range(1, 4)]
    path = tmp_path / "torn.flow"
    path.write_bytes(b"".join(whole) + whole[0][:37])  # a fourth flow, cut in its body
    assert complete_length(path) == sum(map(len, whole))
    path.write_bytes(b"".join(whole) + b"12")  # cut inside the length prefix
    assert complete_length(path) == sum(map(len, whole))
    path.write_bytes(b"")
    assert complete_length(path) == 0


def test_a_dead_capture_process_leaves_only_the_flows_not_wholly_in_its_pipe() -> None:
    """Frames the pipe took whole are the child's (it wrote them, or they are lost with it);
    a frame the pipe took only part of never reached the file, so its flows are written
    again by the proxy, and a whole one is not written twice; nor are the flows of a frame
    that were not for the capture."""
    from collections import deque
    from types import SimpleNamespace

    from leakmap.addons.capture_writer import CaptureWriter
    from leakmap.addons.handover import ANALYSE, CAPTURE, Entry, PipeOut, framed

    writer = CaptureWriter.__new__(CaptureWriter)  # its pipe's side only, no child
    writer.pipe = PipeOut(-1, writer._broken, writer._forget_written)
    writer._unwritten, writer.failure, writer.leftover = deque(), None, []
    writer._process = SimpleNamespace(exitcode=-9)

    def frame_of(*entries: Entry) -> None:
        frame = framed(([e.state for e in entries], [e.marks for e in entries]))
        writer.pipe.add(frame)  # as read() does, without writing
        writer._unwritten.append((writer.pipe.handed, [e.state for e in entries
                                                       if e.marks & CAPTURE]))

    def entry(name: str, marks: int = CAPTURE) -> Entry:
        return Entry(SimpleNamespace(), {"id": name}, marks)  # type: ignore[arg-type]

    frame_of(entry("a"), entry("b"))
    first_frame = writer.pipe.handed
    frame_of(entry("c"), entry("analysed only", ANALYSE))
    writer.pipe._taken(first_frame + 3)  # the first frame whole, three bytes of the second
    writer.pipe.fail("writing to it failed: [Errno 32] Broken pipe")
    writer.read(framed(([{"id": "d"}], [CAPTURE])), [entry("d")])  # framed after it failed
    assert [state["id"] for state in writer.leftover] == ["c", "d"]
    assert writer.failure is not None and "exit code -9" in writer.failure


def test_the_capture_process_writes_large_and_small_parts_in_order(tmp_path: Path) -> None:
    """Bodies are written from the state's own bytes, the rest joined: the same file."""
    import os

    from leakmap.addons.capture_writer import _write_all
    from leakmap.addons.flows import tnetstring_dumps, tnetstring_parts

    states = [{"request": {"content": bytes([n]) * size, "path": "/x"}, "id": str(n)}
              for n, size in enumerate([10, 300_000, 5, 70_000, 0])]
    parts = tnetstring_parts(states)
    assert any(part is state["request"]["content"] for part in parts for state in states[1:2])
    path = tmp_path / "parts.flow"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        _write_all(descriptor, parts * 600)  # more buffers than one writev takes
    finally:
        os.close(descriptor)
    assert path.read_bytes() == b"".join(tnetstring_dumps(state) for state in states) * 600


def test_a_frame_carries_large_bodies_out_of_band_and_leaves_the_states_as_they_were() -> None:
    import os
    import threading

    from leakmap.addons.handover import CAPTURE, cut_frame, framed, read_message, whole_bodies

    big, small = b"B" * 200_000, b"s" * 10
    states = [{"id": "a", "request": {"content": big, "path": "/"},
               "response": {"content": small}},
              {"id": "b", "request": {"content": b"C" * 70_000}, "response": None}]
    frame = framed((states, [CAPTURE, CAPTURE]))
    assert frame.size == sum(len(view) for view in frame.views) < 300_000 + 1_000
    assert any(view.obj is big for view in frame.views)  # written from the flow's own bytes
    assert states[0]["request"]["content"] is big  # the states themselves are not changed
    # a reader sent only the start of the first body
    cut = cut_frame(frame, lambda index, part, length: 1_000 if index == 0 else length)
    read, write = os.pipe()
    writer = threading.Thread(target=lambda: [os.write(write, view) for frame_views in
                                              (frame.views, cut.views) for view in frame_views])
    writer.start()
    got, whole = read_message(read), read_message(read)
    writer.join()
    os.close(write)
    assert read_message(read) is None  # end-of-file
    os.close(read)
    assert got is not None and whole is not None
    (got_states, marks), lengths = got
    assert marks == [CAPTURE, CAPTURE] and lengths == [200_000, 70_000]
    assert [bytes(state["request"]["content"]) for state in got_states] == [big, b"C" * 70_000]
    assert got_states[0]["response"]["content"] == small and got_states[0]["request"]["path"] == "/"
    from leakmap.addons.flows import tnetstring_dumps  # and they are written as they came
    assert [tnetstring_dumps(state) for state in got_states] == [tnetstring_dumps(s) for s in states]
    (cut_states, _), cut_lengths = whole
    lengths_left = iter(cut_lengths)
    assert whole_bodies(cut_states[0], lengths_left) == [["request.content", 200_000, 1_000]]
    assert cut_states[0]["request"]["content"] == big[:1_000]
    assert whole_bodies(cut_states[1], lengths_left) == []
    assert cut_states[1]["request"]["content"] == b"C" * 70_000
