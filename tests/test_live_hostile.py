"""Hostile traffic through a real proxy: bombs, markup, a killed connection, a hidden IMEI.

The proxy must keep answering, log every flow with what went wrong in its
analysis, and still find the IMEI.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

import corpus
import httpx

from conftest import leakmap_cli

IMEI = "865312345678901"  # samples/redmi-1s.yaml


def _killed_mid_body(proxy, port: int) -> None:  # type: ignore[no-untyped-def]
    """CONNECT, TLS, promise 100 kB of body, send 10 bytes, then reset the connection."""
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    raw.sendall(f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode())
    assert b" 200 " in raw.recv(4096)
    context = ssl.create_default_context(cafile=str(proxy.ca))
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(b"POST /killed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{\"imei\": \"")
    time.sleep(0.3)
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    tls.close()


def test_hostile_traffic_is_logged_and_the_proxy_keeps_answering(
        start_proxy, tls_server, tmp_path: Path, device_file: Path) -> None:
    db = f"sqlite:///{tmp_path / 'hostile.db'}"
    proxy = start_proxy("--device", str(device_file), "--db", db, "--run-name", "hostile",
                        "--flush-ms", "100")
    base = f"https://localhost:{tls_server.port}"
    context = ssl.create_default_context(cafile=str(proxy.ca))
    with httpx.Client(proxy=proxy.url, verify=context, timeout=60) as client:
        bomb = client.post(f"{base}/bomb", content=corpus.gzip_bomb(),
                           headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert bomb.status_code == 200
        markup = client.post(
            f"{base}/<script>alert(1)</script>",
            headers={"x-evil": "<script>alert('x')</script>", "user-agent": "<img src=x onerror=1>"},
            content=b'{"a": "<b>", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        )
        assert markup.status_code == 200
        hidden = client.post(f"{base}/hidden", json={"x": "<svg/onload=1>", "n": [{"dev": IMEI}]})
        assert hidden.status_code == 200
        _killed_mid_body(proxy, tls_server.port)
        started = time.monotonic()
        assert client.get(f"{base}/still-there").status_code == 200
        assert time.monotonic() - started < 10  # answered, not stalled behind the bomb
    assert proxy.stop() == 0, proxy.output
    assert "Traceback" not in proxy.output

    report = json.loads(leakmap_cli("report", "--db", db, "--format", "json").stdout)
    flows = {f["url"].rsplit("/", 1)[-1]: f for f in report["flows"]}
    assert {"bomb", "hidden", "still-there", "killed"} <= set(flows)
    assert any("script" in name for name in flows)
    bomb_note = flows["bomb"]["analysis_error"] or ""
    assert any(word in bomb_note for word in ("decompressed", "limit", "budget")), bomb_note
    assert flows["killed"]["flow_error"]  # the reset is recorded on the flow
    imei = [f for f in report["findings"] if f["data_type"] == "imei"]
    assert any(f["url"].endswith("/hidden") and f["match"] == "known" for f in imei)
    assert IMEI not in json.dumps(report)
