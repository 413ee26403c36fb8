"""Flows that are not HTTP: DNS queries and raw TCP streams, through a real proxy."""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import io

from conftest import leakmap_cli

IMEI = "865312345678901"  # samples/redmi-1s.yaml


def dns_query(name: str, port: int) -> bytes:
    header = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    question = labels + b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(header + question, ("127.0.0.1", port))
        return client.recvfrom(4096)[0]


def _report(db: str, run: str) -> dict:
    return json.loads(leakmap_cli("report", "--db", db, "--run", run, "--format", "json").stdout)


def test_identifier_in_a_dns_name_is_found(start_proxy, tmp_path: Path, device_file: Path) -> None:
    db = f"sqlite:///{tmp_path / 'dns.db'}"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proxy = start_proxy("--mode", f"dns@{port}", "--device", str(device_file), "--db", db,
                        "--run-name", "dns", wait_port=False)
    answer = dns_query(f"{IMEI}.t.localhost", port)
    assert answer[:2] == b"\x12\x34"
    assert proxy.stop() == 0, proxy.output
    report = _report(db, "dns")
    assert [f["kind"] for f in report["flows"]] == ["dns"]
    assert {(f["field"], f["data_type"], f["match"]) for f in report["findings"]} == {
        ("dns.question", "imei", "known")
    }


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(4096)
        self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_raw_tcp_stream_is_logged_and_searched(start_proxy, echo_server: int, tmp_path: Path,
                                               device_file: Path, networks_file: Path) -> None:
    db = f"sqlite:///{tmp_path / 'tcp.db'}"
    proxy = start_proxy("--device", str(device_file), "--db", db, "--run-name", "tcp",
                        "--networks", str(networks_file), "--set", "tcp_hosts=127.0.0.1")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        client.sendall(f"CONNECT 127.0.0.1:{echo_server} HTTP/1.1\r\n\r\n".encode())
        assert b"200" in client.recv(4096)
        client.sendall(f"HELLO id={IMEI}\n".encode())
        assert client.recv(4096) == f"HELLO id={IMEI}\n".encode()
    assert proxy.stop() == 0, proxy.output
    report = _report(db, "tcp")
    tcp = [f for f in report["flows"] if f["kind"] == "tcp"]
    assert len(tcp) == 1 and tcp[0]["country"] == "CN" and tcp[0]["finding_count"] == 1
    assert tcp[0]["request_size"] == len(f"HELLO id={IMEI}\n")
    assert [(f["field"], f["data_type"]) for f in report["findings"]] == [
        ("tcp.messages[0].text", "imei")
    ]


def test_a_clean_stop_records_connections_still_open(start_proxy, echo_server: int,
                                                     tmp_path: Path, device_file: Path) -> None:
    db = f"sqlite:///{tmp_path / 'open.db'}"
    proxy = start_proxy("--device", str(device_file), "--db", db, "--run-name", "open",
                        "--set", "tcp_hosts=127.0.0.1")
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    client.sendall(f"CONNECT 127.0.0.1:{echo_server} HTTP/1.1\r\n\r\n".encode())
    assert b"200" in client.recv(4096)
    client.sendall(f"imei {IMEI}\n".encode())
    assert client.recv(4096)
    try:
        assert proxy.stop() == 0, proxy.output  # the tunnel is still open
    finally:
        client.close()
    flows = _report(db, "open")["flows"]
    assert [(f["kind"], f["finding_count"]) for f in flows] == [("tcp", 1)]
    # mitmproxy may end the tunnel itself while stopping; either way it is recorded
    assert flows[0]["flow_error"] in (None, "connection still open when the proxy stopped")
    (capture,) = (tmp_path / "captures").glob("open*.flow")  # and kept in the run's capture
    with capture.open("rb") as handle:
        saved = list(io.FlowReader(handle).stream())
    assert [flow.type for flow in saved] == ["tcp"]
    assert IMEI.encode() in saved[0].messages[0].content


def test_a_connect_to_an_unreachable_server_is_logged(start_proxy, tmp_path: Path,
                                                      networks_file: Path) -> None:
    db = f"sqlite:///{tmp_path / 'refused.db'}"
    proxy = start_proxy("--db", db, "--run-name", "refused", "--networks", str(networks_file))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as client:
        client.sendall(f"CONNECT 127.0.0.1:{closed_port} HTTP/1.1\r\n\r\n".encode())
        assert b"502" in client.recv(4096)
    assert proxy.stop() == 0, proxy.output
    flows = _report(db, "refused")["flows"]
    assert len(flows) == 1
    assert flows[0]["server_port"] == closed_port and flows[0]["country"] == "CN"
    assert flows[0]["flow_error"]
