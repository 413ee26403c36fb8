"""WebSocket messages through a real proxy, with wsproto (mitmproxy's own WebSocket library)."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Request,
    TextMessage,
)

from conftest import leakmap_cli
from servers import self_signed

IMEI = "865312345678901"  # samples/redmi-1s.yaml


def _serve_one(listener: socket.socket, context: ssl.SSLContext) -> None:
    raw, _ = listener.accept()
    with context.wrap_socket(raw, server_side=True) as conn:
        ws = WSConnection(ConnectionType.SERVER)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    conn.sendall(ws.send(AcceptConnection()))
                elif isinstance(event, Message):
                    conn.sendall(ws.send(TextMessage(data="ok")))
                elif isinstance(event, CloseConnection):
                    conn.sendall(ws.send(event.response()))
                    return


@pytest.fixture
def ws_server(tmp_path: Path) -> Iterator[int]:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=_serve_one, args=(listener, context), daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()


def _receive(conn: ssl.SSLSocket, ws: WSConnection) -> list[object]:
    ws.receive_data(conn.recv(65536))
    return list(ws.events())


def test_websocket_messages_from_the_phone_are_searched(
    start_proxy, ws_server: int, tmp_path: Path, device_file: Path, networks_file: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'ws.db'}"
    proxy = start_proxy("--device", str(device_file), "--db", db, "--run-name", "ws",
                        "--networks", str(networks_file))
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    raw.sendall(f"CONNECT localhost:{ws_server} HTTP/1.1\r\n\r\n".encode())
    assert b" 200 " in raw.recv(4096)
    context = ssl.create_default_context(cafile=str(proxy.ca))
    with context.wrap_socket(raw, server_hostname="localhost") as conn:
        ws = WSConnection(ConnectionType.CLIENT)
        conn.sendall(ws.send(Request(host="localhost", target="/push")))
        assert any(isinstance(e, AcceptConnection) for e in _receive(conn, ws))
        conn.sendall(ws.send(TextMessage(data=json.dumps({"hello": "x", "imei": IMEI}))))
        assert any(isinstance(e, TextMessage) for e in _receive(conn, ws))
        conn.sendall(ws.send(BytesMessage(data=b"\x00\x01binary")))
        _receive(conn, ws)
        conn.sendall(ws.send(CloseConnection(code=1000)))
        _receive(conn, ws)
    assert proxy.stop() == 0, proxy.output
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "ws", "--format",
                                    "json").stdout)
    assert [(f["kind"], f["finding_count"]) for f in report["flows"]] == [("websocket", 1)]
    assert {(f["field"], f["data_type"], f["match"]) for f in report["findings"]} == {
        ("websocket.messages[0].json.imei", "imei", "known")
    }
