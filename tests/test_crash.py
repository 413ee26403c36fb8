"""Crash safety for real: SIGKILL mid-run, a database that goes away, two proxies on one server.

PostgreSQL is made unavailable the way a stopped server looks to a client:
the test database stops accepting connections and its sessions are
terminated; then it is let back in.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import ssl
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from conftest import leakmap_cli

IMEI = "865312345678901"


def _client(proxy) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca)),
                        timeout=20)


def _send(client: httpx.Client, port: int, path: str) -> httpx.Response:
    return client.post(f"https://localhost:{port}/{path}", json={"imei": IMEI, "path": path})


def _until(condition: Callable[[], bool], timeout: float = 40, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _flows(db: str, run: str) -> list[dict]:
    report = json.loads(leakmap_cli("report", "--db", db, "--run", run, "--format", "json").stdout)
    return report["flows"]


def _runs(db: str) -> dict[str, str]:
    lines = leakmap_cli("runs", "--db", db).stdout.splitlines()[1:]
    return {line.split()[0]: line.split()[2] for line in lines}


@contextmanager
def database_away(pg_url: str) -> Iterator[None]:
    """The run's PostgreSQL database refuses connections until the block ends."""
    name = make_url(pg_url).database
    admin = create_engine(make_url(pg_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": name})
    try:
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def _spills(home: Path) -> list[Path]:
    return sorted((home / "spill").glob("*/run-*.jsonl"))


def test_sigkill_keeps_committed_flows_and_the_next_run_starts(start_proxy, tls_server,
                                                               tmp_path: Path) -> None:
    db_file = tmp_path / "crash.db"
    db = f"sqlite:///{db_file}"
    proxy = start_proxy("--db", db, "--run-name", "killed", "--flush-ms", "100")
    with _client(proxy) as client:
        for index in range(8):
            assert _send(client, tls_server.port, f"k{index}").status_code == 200

    def stored() -> int:
        with sqlite3.connect(db_file) as connection:
            return int(connection.execute("SELECT count(*) FROM flows").fetchone()[0])

    _until(lambda: stored() == 8, what="8 committed flows")
    time.sleep(1.0)  # "committed before the last second"
    assert proxy.stop(signal.SIGKILL) == -signal.SIGKILL
    assert stat.S_IMODE(db_file.stat().st_mode) == 0o600

    assert _runs(db)["killed"] == "aborted"  # marked on the next open, no manual repair
    assert len(_flows(db, "killed")) == 8
    again = start_proxy("--db", db, "--run-name", "after")
    with _client(again) as client:
        assert _send(client, tls_server.port, "after").status_code == 200
    assert again.stop() == 0, again.output
    assert _runs(db) == {"killed": "aborted", "after": "completed"}
    assert [f["url"].rsplit("/", 1)[-1] for f in _flows(db, "after")] == ["after"], again.output


@pytest.mark.parametrize("workers", ["0", "1"])  # stored by the proxy, or by its analysis process
def test_stop_mode_refuses_with_502_spills_and_resumes(start_proxy, tls_server, pg_url: str,
                                                       leakmap_home: Path, workers: str) -> None:
    proxy = start_proxy("--db", pg_url, "--run-name", "stop", "--flush-ms", "100",
                        "--workers", workers)
    sent = 0
    answers: list[int] = []
    with _client(proxy) as client:
        # with workers: until flows go to the analysis process, which then finds the
        # database away and spills
        while sent < 3 or (workers == "1" and "analysis process ready" not in proxy.output):
            assert sent < 200, proxy.output
            answers.append(_send(client, tls_server.port, f"before{sent}").status_code)
            sent += 1
            time.sleep(0.1)
        def answered(status: int, label: str) -> Callable[[], bool]:
            def check() -> bool:
                nonlocal sent
                response = _send(client, tls_server.port, f"{label}{sent}")
                sent += 1
                answers.append(response.status_code)
                return response.status_code == status
            return check

        with database_away(pg_url):
            _until(answered(502, "during"), what="a 502 while the database is away")
            refusal = _send(client, tls_server.port, "refused")
            sent += 1
            answers.append(refusal.status_code)
            assert refusal.status_code == 502
            assert "database cannot be written" in refusal.text and "spill" in refusal.text
            (spill,) = _spills(leakmap_home)
            assert stat.S_IMODE(spill.stat().st_mode) == 0o600
            assert IMEI not in spill.read_text()  # what the store keeps, never the body

        _until(answered(200, "back"), what="forwarding to resume")
    assert proxy.stop() == 0, proxy.output
    assert _spills(leakmap_home) == []  # replayed and removed
    flows = _flows(pg_url, "stop")
    assert len(flows) == sent  # every request, refused or forwarded, is logged
    assert sorted(f["status_code"] for f in flows) == sorted(answers)
    assert len(tls_server.received) == answers.count(200)


def test_continue_mode_keeps_traffic_flowing_and_a_later_run_replays(
        start_proxy, tls_server, pg_url: str, leakmap_home: Path) -> None:
    proxy = start_proxy("--db", pg_url, "--run-name", "cont", "--flush-ms", "100",
                        "--on-store-failure", "continue")
    with _client(proxy) as client:
        assert _send(client, tls_server.port, "first").status_code == 200
        _until(lambda: len(_flows(pg_url, "cont")) == 1, what="the first flow stored")
        with database_away(pg_url):
            for index in range(5):
                assert _send(client, tls_server.port, f"away{index}").status_code == 200
            _until(lambda: bool(_spills(leakmap_home)), what="the spill file")
            assert proxy.stop() == 0, proxy.output  # stopped while the database is still away
        assert len(_spills(leakmap_home)) == 1
    later = start_proxy("--db", pg_url, "--run-name", "later")
    assert later.stop() == 0, later.output
    assert _spills(leakmap_home) == []
    paths = sorted(f["url"].rsplit("/", 1)[-1] for f in _flows(pg_url, "cont"))
    assert paths == sorted(["first", *(f"away{i}" for i in range(5))])


def test_two_proxies_on_one_postgresql_lose_nothing(start_proxy, tls_server, pg_url: str) -> None:
    proxies = {name: start_proxy("--db", pg_url, "--run-name", name, "--flush-ms", "50")
               for name in ("unit-a", "unit-b")}

    def traffic(proxy) -> None:  # type: ignore[no-untyped-def]
        with _client(proxy) as client:
            for index in range(40):
                assert _send(client, tls_server.port, f"n{index}").status_code == 200

    threads = [threading.Thread(target=traffic, args=(p,)) for p in proxies.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for proxy in proxies.values():
        assert proxy.stop() == 0, proxy.output
    for name in proxies:
        flows = _flows(pg_url, name)
        assert len(flows) == 40 and len({f["flow_id"] for f in flows}) == 40
        assert all(f["finding_count"] >= 1 for f in flows)
    assert _runs(pg_url) == {"unit-a": "completed", "unit-b": "completed"}
