"""mitmproxy flows to :class:`~leakmap.core.exchange.Exchange`, and flow files.

The only module that knows mitmproxy's flow classes.  Bodies are taken as
``raw_content`` (still content-encoded): the core decodes them with a
streaming decompressor and a cap, which mitmproxy's ``.content`` would not.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterator
from pathlib import Path

from mitmproxy import connection, dns, http, tcp, tls, udp
from mitmproxy.flow import Flow
from mitmproxy.io import compat, tnetstring

from leakmap.core.exchange import Exchange, Message


def _ip(address: tuple | None) -> str | None:
    if not address:
        return None
    try:
        return str(ipaddress.ip_address(str(address[0]).split("%")[0]))
    except ValueError:
        return None


def _port(address: tuple | None) -> int | None:
    return int(address[1]) if address and len(address) > 1 else None


def _server(conn: connection.Server) -> tuple[str | None, int | None]:
    address = conn.peername or conn.address
    return _ip(address), _port(conn.peername or conn.address)


def _base(flow: Flow, kind: str) -> Exchange:
    server_ip, server_port = _server(flow.server_conn)
    client = flow.client_conn.peername
    return Exchange(
        flow_id=flow.id,
        kind=kind,
        timestamp=flow.timestamp_created,
        client_ip=_ip(client),
        client_port=_port(client),
        server_ip=server_ip,
        server_port=server_port,
        sni=flow.server_conn.sni or flow.client_conn.sni,
        host=flow.server_conn.sni or (str(flow.server_conn.address[0])
                                      if flow.server_conn.address else None),
        error=flow.error.msg if flow.error else None,
    )


def _http(flow: http.HTTPFlow) -> Exchange:
    request = flow.request
    exchange = _base(flow, "websocket" if flow.websocket else "http")
    exchange.timestamp = request.timestamp_start or flow.timestamp_created
    exchange.host = request.pretty_host
    exchange.scheme = request.scheme
    exchange.method = request.method
    exchange.url = request.pretty_url
    exchange.path = request.path
    exchange.http_version = request.http_version
    exchange.request_headers = [(k, v) for k, v in request.headers.items(multi=True)]
    exchange.request_body = request.raw_content or b""
    exchange.request_body_truncated = request.raw_content is None and bool(
        request.headers.get("content-length", "0") not in ("", "0")
    )
    if flow.response is not None:
        exchange.status_code = flow.response.status_code
        exchange.response_headers = [(k, v) for k, v in flow.response.headers.items(multi=True)]
        exchange.response_size = len(flow.response.raw_content or b"")
    if exchange.error is None and request.method == "CONNECT" and (
        exchange.status_code is None or exchange.status_code >= 400
    ):
        exchange.error = f"CONNECT failed ({exchange.status_code or 'no answer'})"
    if flow.websocket is not None:
        exchange.messages = [
            Message(m.from_client, m.content, m.is_text) for m in flow.websocket.messages
        ]
    return exchange


def _stream(flow: tcp.TCPFlow | udp.UDPFlow, kind: str) -> Exchange:
    exchange = _base(flow, kind)
    exchange.messages = [Message(m.from_client, m.content) for m in flow.messages]
    return exchange


def _dns(flow: dns.DNSFlow) -> Exchange:
    exchange = _base(flow, "dns")
    questions = flow.request.questions if flow.request else []
    exchange.dns_question = questions[0].name if questions else None
    exchange.host = exchange.dns_question
    if flow.response is not None:
        exchange.status_code = flow.response.response_code
        exchange.dns_answers = _addresses(flow.response.answers)
    return exchange


def _addresses(answers: list[dns.ResourceRecord]) -> list[str]:
    """The A and AAAA addresses of a DNS answer section (malformed records skipped)."""
    found = []
    for record in answers:
        try:
            if record.type == dns.types.A:
                found.append(str(record.ipv4_address))
            elif record.type == dns.types.AAAA:
                found.append(str(record.ipv6_address))
        except (ValueError, TypeError):
            continue
    return found


def exchange_from_flow(flow: Flow) -> Exchange | None:
    """The core's view of ``flow``; None for flow types leakmap does not log."""
    if isinstance(flow, http.HTTPFlow):
        return _http(flow)
    if isinstance(flow, tcp.TCPFlow):
        return _stream(flow, "tcp")
    if isinstance(flow, udp.UDPFlow):
        return _stream(flow, "udp")
    if isinstance(flow, dns.DNSFlow):
        return _dns(flow)
    return None


def exchange_from_tls_failure(data: tls.TlsData, timestamp: float) -> Exchange:
    """A TLS handshake the client refused (a pinned app): who it tried to reach."""
    server_ip, server_port = _server(data.context.server)
    client = data.context.client
    sni = client.sni or data.context.server.sni
    return Exchange(
        flow_id=str(uuid.uuid4()),
        kind="tls",
        timestamp=client.timestamp_start or timestamp,
        client_ip=_ip(client.peername),
        client_port=_port(client.peername),
        server_ip=server_ip,
        server_port=server_port,
        sni=sni,
        host=sni or server_ip,
        error=client.error or "client refused the TLS handshake (certificate pinning?)",
    )


class OpenFlows:
    """Flows that started and have not ended: what a clean stop must still record.

    mitmproxy's ``save`` addon does the same for the flows it writes.
    """

    def __init__(self) -> None:
        self._flows: dict[str, Flow] = {}

    def add(self, flow: Flow) -> None:
        self._flows[flow.id] = flow

    def discard(self, flow: Flow) -> None:
        self._flows.pop(flow.id, None)

    def drain(self) -> list[Flow]:
        flows = list(self._flows.values())
        self._flows.clear()
        return flows


STILL_OPEN = "connection still open when the proxy stopped"


def read_flow_file(path: Path) -> Iterator[Flow]:
    """Flows in a file written by ``mitmdump -w``.  Raises ValueError if unreadable."""
    for record in flow_records(path):
        yield parse_flow_record(record, path)


# A flow file is a series of tnetstrings, one per flow: ``<length>:<payload><type>``.
_MAX_LENGTH_DIGITS = 12  # as mitmproxy's reader: a longer prefix is not a length
_UNREADABLE = "Invalid data format."  # what mitmproxy's FlowReader says of a damaged file


def _unreadable(path: Path, problem: str = _UNREADABLE) -> ValueError:
    return ValueError(f"{path}: not a readable mitmproxy flow file ({problem})")


def flow_records(path: Path) -> Iterator[bytes]:
    """Each flow of a flow file as its stored bytes, unparsed: cutting a file into flows
    is cheap, parsing them is not, so ``leakmap analyze`` parses them in its workers
    (:func:`parse_flow_record`).  Raises ValueError where the file is cut short or damaged,
    after the flows before that point."""
    with path.open("rb") as handle:
        while prefix := handle.read(1):
            while prefix[-1:].isdigit() and len(prefix) <= _MAX_LENGTH_DIGITS:
                digit = handle.read(1)
                if not digit:  # the file ends inside the prefix
                    break
                prefix += digit
            if not prefix.endswith(b":") or len(prefix) < 2:
                raise _unreadable(path)
            size = int(prefix[:-1])
            body = handle.read(size + 1)  # the payload and its type byte
            if len(body) != size + 1:
                raise _unreadable(path)
            yield prefix + body


def parse_flow_record(record: bytes, path: Path) -> Flow:
    """The flow stored as ``record`` (one of :func:`flow_records`), as mitmproxy's own reader
    makes it; ValueError naming ``path`` if it is not one."""
    try:
        state = tnetstring.loads(record)
    except (ValueError, TypeError, IndexError) as e:
        raise _unreadable(path) from e
    if not isinstance(state, dict):
        raise _unreadable(path, f"Invalid flow: loaded={state!r:.200}")
    try:
        return Flow.from_state(compat.migrate_flow(state))
    except ValueError as e:
        raise _unreadable(path, str(e)) from e
    except Exception as e:  # a record that is tnetstring but no flow (KeyError, TypeError...)
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e
