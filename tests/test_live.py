"""End to end: a real proxy, a real HTTPS client, a real TLS server, the real database."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy import io

from conftest import leakmap_cli
from servers import descendants

IMEI = "865312345678901"  # samples/redmi-1s.yaml
OWN_NUMBER = "+919812345678"
EXPECTED = {
    ("request.body.json.imei", "imei", "plain", "known"),
    ("request.query.ph", "phone_number", "base64", "known"),
    ("request.headers.x-device", "imei", "sha256", "known"),
}


def _client(proxy) -> httpx.Client:  # type: ignore[no-untyped-def]
    context = ssl.create_default_context(cafile=str(proxy.ca))
    return httpx.Client(proxy=proxy.url, verify=context, timeout=20)


def _send_phone_traffic(proxy, server_port: int) -> None:  # type: ignore[no-untyped-def]
    base = f"https://localhost:{server_port}"
    phone_b64 = base64.b64encode(OWN_NUMBER.encode()).decode()
    with _client(proxy) as client:
        leaky = client.post(
            f"{base}/v2/register",
            params={"ph": phone_b64},
            json={"imei": IMEI, "note": "hello"},
            headers={"x-device": hashlib.sha256(IMEI.encode()).hexdigest()},
        )
        assert leaky.status_code == 200
        assert client.get(f"{base}/generate_204").status_code == 200
        decoy = client.post(f"{base}/v2/log", json={"serial": "865312345678903"})
        assert decoy.status_code == 200


def _report(db: str, run: str) -> dict:
    result = leakmap_cli("report", "--db", db, "--run", run, "--format", "json")
    return json.loads(result.stdout)


def _finding_keys(report: dict) -> set[tuple[str, str, str, str]]:
    return {(f["field"], f["data_type"], f["encoding"], f["match"]) for f in report["findings"]}


@pytest.mark.parametrize("workers", ["1", "0"])  # analysis in a child process, or on threads
def test_leakmap_run_logs_every_flow_and_exactly_the_planted_findings(
    start_proxy, tls_server, tmp_path: Path, device_file: Path, networks_file: Path, workers: str
) -> None:
    db = f"sqlite:///{tmp_path / 'live.db'}"
    proxy = start_proxy("--device", str(device_file), "--db", db, "--run-name", "live-1",
                        "--networks", str(networks_file), "--flush-ms", "200",
                        "--workers", workers)
    _send_phone_traffic(proxy, tls_server.port)
    assert proxy.stop() == 0, proxy.output

    assert len(tls_server.received) == 3  # the proxy forwarded everything
    report = _report(db, "live-1")
    assert _finding_keys(report) == EXPECTED
    assert len(report["flows"]) == 3
    by_path = {f["url"].split("?")[0].rsplit("/", 1)[-1]: f for f in report["flows"]}
    assert by_path["register"]["finding_count"] == 3
    assert by_path["generate_204"]["finding_count"] == 0
    assert by_path["log"]["finding_count"] == 0
    for finding in report["findings"]:
        assert finding["country"] == "CN"
        assert finding["server_ip"] == "127.0.0.1"
        assert finding["host"] == "localhost"
        assert finding["run"] == "live-1"
        assert finding["timestamp"].endswith("Z")
        assert finding["severity"] == "high"
        assert IMEI not in json.dumps(finding)  # only masked previews and keyed hashes
    # mitmdump printed one line per finding while the phone was in hand
    assert proxy.output.count("leakmap: high imei") == 2


def test_mitmdump_script_and_flow_file_replay_agree(
    start_proxy, tls_server, tmp_path: Path, device_file: Path, networks_file: Path
) -> None:
    live_db = f"sqlite:///{tmp_path / 'mitmdump.db'}"
    capture = tmp_path / "capture.flow"
    proxy = start_proxy(
        "--set", f"leakmap_device={device_file}", "--set", f"leakmap_db={live_db}",
        "--set", "leakmap_run_name=plain-mitmdump", "--set", f"leakmap_networks={networks_file}",
        "-w", str(capture), via="mitmdump",
    )
    _send_phone_traffic(proxy, tls_server.port)
    assert proxy.stop() == 0, proxy.output
    live = _report(live_db, "plain-mitmdump")
    assert _finding_keys(live) == EXPECTED
    # what mitmweb and the console show: the leaky flow marked and commented
    with capture.open("rb") as handle:
        saved = {f.request.path.split("?")[0]: f for f in io.FlowReader(handle).stream()}
    assert saved["/v2/register"].marked
    assert saved["/v2/register"].marked == ":rotating_light:"  # findings sent to a watched country
    assert saved["/v2/register"].comment == ("leakmap: imei, phone_number -> CN "
                                             "[watched: server_country=CN]")
    assert not saved["/generate_204"].marked

    offline_db = f"sqlite:///{tmp_path / 'offline.db'}"
    for run in ("replay-a", "replay-b"):
        leakmap_cli("analyze", str(capture), "--device", str(device_file), "--db", offline_db,
                    "--networks", str(networks_file), "--run-name", run)
    first, second = _report(offline_db, "replay-a"), _report(offline_db, "replay-b")
    assert _finding_keys(first) == EXPECTED

    def strip_run(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "run"} for row in rows]

    assert strip_run(first["findings"]) == strip_run(second["findings"])
    assert strip_run(first["flows"]) == strip_run(second["flows"])
    # the live run and the replay saw the same flows with the same ids and times
    assert [f["flow_id"] for f in first["flows"]] == [f["flow_id"] for f in live["flows"]]
    assert [f["timestamp"] for f in first["flows"]] == [f["timestamp"] for f in live["flows"]]


def test_a_reloaded_script_ends_its_run_and_stores_every_flow(
    start_proxy, tls_server, tmp_path: Path, device_file: Path, networks_file: Path
) -> None:
    """mitmproxy reloads a script whose file changed: it removes the old addons and calls
    their ``done`` without awaiting it.  The old run must still be closed with every flow."""
    script = tmp_path / "leakmap_addons.py"
    installed = leakmap_cli("addon-path").stdout.strip()
    script.write_text(Path(installed).read_text())
    db = f"sqlite:///{tmp_path / 'reload.db'}"
    proxy = start_proxy(
        "--set", f"leakmap_device={device_file}", "--set", f"leakmap_db={db}",
        "--set", f"leakmap_networks={networks_file}", "--set", "leakmap_flush_ms=100000",
        "--set", "leakmap_workers=1", via="mitmdump", script=script,
    )
    _send_phone_traffic(proxy, tls_server.port)
    later = script.stat().st_mtime + 5
    os.utime(script, (later, later))  # mitmproxy looks at the file's time every second
    proxy.wait_for_output("Loading script", count=2)
    proxy.wait_for_output("capturing the run's traffic", count=2)  # the new run began
    _send_phone_traffic(proxy, tls_server.port)
    assert proxy.stop() == 0, proxy.output
    assert "never awaited" not in proxy.output
    runs = json.loads(leakmap_cli("runs", "--db", db, "--format", "json").stdout)
    assert [(run["status"], run["flows"]) for run in runs] == [("completed", 3)] * 2, runs


def test_http2_flows_are_logged(start_proxy, tls_server, tmp_path: Path, device_file: Path,
                                networks_file: Path) -> None:
    db = f"sqlite:///{tmp_path / 'h2.db'}"
    # lazy: offer HTTP/2 to the phone although the test server speaks only HTTP/1.1
    proxy = start_proxy("--device", str(device_file), "--db", db, "--run-name", "h2",
                        "--networks", str(networks_file), "--set", "connection_strategy=lazy")
    curl = subprocess.run(
        ["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version}", "--max-time", "10",
         "--cacert", str(proxy.ca), "-x", proxy.url,
         f"https://localhost:{tls_server.port}/h2?imei={IMEI}"],
        capture_output=True, text=True,
    )
    assert curl.stdout == "2", curl.stderr
    assert proxy.stop() == 0, proxy.output
    report = _report(db, "h2")
    assert [f["url"].split("?")[0][-3:] for f in report["flows"]] == ["/h2"]
    assert report["flows"][0]["http_version"] == "HTTP/2.0"
    assert _finding_keys(report) == {("request.query.imei", "imei", "plain", "known")}


def test_pinned_app_is_still_logged_with_sni_and_country(
    start_proxy, tls_server, tmp_path: Path, networks_file: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'pinned.db'}"
    proxy = start_proxy("--db", db, "--run-name", "pinned", "--networks", str(networks_file))
    # curl without the mitmproxy CA refuses the handshake, as a pinned app would
    curl = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", proxy.url,
         f"https://localhost:{tls_server.port}/pinned"],
        capture_output=True, text=True,
    )
    assert curl.returncode != 0
    assert proxy.stop() == 0, proxy.output
    flows = _report(db, "pinned")["flows"]
    assert len(flows) == 1
    assert flows[0]["kind"] == "tls"
    assert flows[0]["sni"] == "localhost"
    assert flows[0]["server_ip"] == "127.0.0.1"
    assert flows[0]["country"] == "CN"
    assert tls_server.received == []


def test_mitmweb_shows_flows_with_findings_marked_and_commented(
    start_proxy, tls_server, tmp_path: Path, device_file: Path, networks_file: Path
) -> None:
    import re

    from servers import free_port

    db = f"sqlite:///{tmp_path / 'web.db'}"
    web_port = free_port()
    proxy = start_proxy("--set", f"leakmap_device={device_file}", "--set", f"leakmap_db={db}",
                        "--set", f"leakmap_networks={networks_file}", "--set",
                        "web_open_browser=false", "--web-port", str(web_port), via="mitmweb")
    _send_phone_traffic(proxy, tls_server.port)
    proxy.wait_for_output("token=")
    token = re.search(r"token=(\w+)", proxy.output)
    assert token is not None
    import time

    deadline = time.monotonic() + 30  # analysis is asynchronous (a worker process starts first)
    while True:
        flows = httpx.get(f"http://127.0.0.1:{web_port}/flows",
                          params={"token": token.group(1)}, timeout=10).json()
        shown = {f["request"]["path"].split("?")[0]: f for f in flows}
        if shown.get("/v2/register", {}).get("comment") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert proxy.stop() == 0, proxy.output
    assert shown["/v2/register"]["marked"]
    assert shown["/v2/register"]["comment"] == ("leakmap: imei, phone_number -> CN "
                                                "[watched: server_country=CN]")
    assert not shown["/generate_204"]["marked"]


def test_a_killed_proxy_keeps_what_it_committed_before_the_last_second(
    start_proxy, tls_server, tmp_path: Path, device_file: Path, networks_file: Path
) -> None:
    import signal
    import time

    db, proxy = _worker_proxy(start_proxy, tmp_path, device_file, networks_file, "killed")
    _send_phone_traffic(proxy, tls_server.port)
    time.sleep(1.5)  # longer than the default flush interval (0.5 s)
    workers = _analysis_processes(proxy.process.pid)
    proxy.stop(signal.SIGKILL)
    report = _report(db, "killed")  # the database opens cleanly after the kill
    assert len(report["flows"]) == 3
    assert _finding_keys(report) == EXPECTED
    assert workers, "no analysis process"  # it follows the proxy within a few seconds
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def _worker_proxy(start_proxy, tmp_path: Path, device_file: Path, networks_file: Path,  # type: ignore[no-untyped-def]
                  run: str, *extra: str) -> tuple[str, Any]:
    """A proxy with the sample profile, loopback in Beijing and its analysis process, storing
    run ``run`` in its own SQLite file; (database URL, proxy)."""
    db = f"sqlite:///{tmp_path / f'{run}.db'}"
    return db, start_proxy("--device", str(device_file), "--db", db, "--run-name", run,
                           "--networks", str(networks_file), "--workers", "1", *extra)


def _children(pid: int) -> dict[str, list[int]]:
    """leakmap's processes below the proxy: "capture" (it holds the run's .flow file open)
    and "analysis"; mitmproxy's resource tracker is neither."""
    found: dict[str, list[int]] = {"analysis": [], "capture": []}
    for child in descendants(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            files = [os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()]
        except OSError:
            continue
        if b"spawn_main" in command:
            found["capture" if any(f.endswith(".flow") for f in files) else "analysis"].append(child)
    return found


def _analysis_processes(pid: int) -> list[int]:
    """The analysis process, once the capture process has opened its file (until then the
    two look alike)."""
    import time

    deadline = time.monotonic() + 20
    while True:
        found = _children(pid)
        if found["capture"] or time.monotonic() > deadline:
            return found["analysis"]
        time.sleep(0.1)


def test_a_killed_analysis_process_costs_no_flow(
    start_proxy, tls_server, tmp_path: Path, device_file: Path, networks_file: Path
) -> None:
    import signal
    import time

    # it commits every 5 s: killed, it leaves records it stored but did not commit, which the
    # proxy then writes itself
    db, proxy = _worker_proxy(start_proxy, tmp_path, device_file, networks_file, "worker",
                              "--flush-ms", "5000")
    rounds, deadline = 0, time.monotonic() + 60
    # until the process is up, flows are analysed on threads; then they go there
    while "analysis process ready" not in proxy.output and time.monotonic() < deadline:
        _send_phone_traffic(proxy, tls_server.port)
        rounds += 1
        time.sleep(0.3)
    assert "analysis process ready" in proxy.output
    _send_phone_traffic(proxy, tls_server.port)  # analysed and stored there
    rounds += 1
    time.sleep(0.5)
    workers = _analysis_processes(proxy.process.pid)
    assert len(workers) == 1
    os.kill(workers[0], signal.SIGKILL)
    for _ in range(2):
        _send_phone_traffic(proxy, tls_server.port)
        rounds += 1
    assert proxy.stop() == 0, proxy.output
    assert _run_status(db, "worker") == "completed"
    assert "analysis process failed" in proxy.output
    report = _report(db, "worker")
    assert len(report["flows"]) == 3 * rounds  # nothing lost: threads take over
    register = [f for f in report["flows"] if "/v2/register" in f["url"]]
    assert [f["finding_count"] for f in register] == [3] * rounds


def _run_status(db: str, name: str) -> str:
    runs = json.loads(leakmap_cli("runs", "--db", db, "--format", "json").stdout)
    return next(run["status"] for run in runs if run["run"] == name)


def test_a_killed_capture_process_costs_the_capture_no_flow(
    start_proxy, tls_server, tmp_path: Path, device_file: Path, networks_file: Path
) -> None:
    import signal
    import time

    from mitmproxy import io

    db, proxy = _worker_proxy(start_proxy, tmp_path, device_file, networks_file, "capture")
    _send_phone_traffic(proxy, tls_server.port)
    deadline = time.monotonic() + 20
    while not _children(proxy.process.pid)["capture"] and time.monotonic() < deadline:
        time.sleep(0.1)
    (capture,) = _children(proxy.process.pid)["capture"]
    time.sleep(0.5)  # it has written what it was given (a frame every 50 ms)
    os.kill(capture, signal.SIGKILL)
    for _ in range(2):  # the first hand-over after its death finds it gone
        _send_phone_traffic(proxy, tls_server.port)
        time.sleep(0.2)
    assert proxy.stop() == 0, proxy.output
    assert "capture process failed" in proxy.output
    (path,) = (tmp_path / "captures").glob("capture*.flow")
    with path.open("rb") as handle:
        saved = list(io.FlowReader(handle).stream())  # whole: no flow cut short by the kill
    # every flow, in order: those handed over after its death were kept for this process
    assert [flow.request.path.split("?")[0] for flow in saved] == [
        "/v2/register", "/generate_204", "/v2/log"] * 3
    assert _run_status(db, "capture") == "completed"
