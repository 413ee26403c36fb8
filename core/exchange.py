"""What the core knows about one flow: plain data, no mitmproxy objects.

The live addon, the flow-file reader and the HAR reader all turn their input
into an :class:`Exchange`, so that every path runs the same analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import SplitResult, urlsplit


@dataclass(frozen=True)
class Message:
    """One WebSocket, TCP or UDP message."""

    from_client: bool
    content: bytes
    is_text: bool = False


@dataclass
class Exchange:
    """A flow as seen by the core.

    ``kind`` is one of ``http``, ``websocket``, ``tls`` (a TLS handshake that
    failed, e.g. a pinned app), ``tcp``, ``udp`` or ``dns``.
    """

    flow_id: str
    kind: str
    timestamp: float
    client_ip: str | None = None
    client_port: int | None = None
    server_ip: str | None = None
    server_port: int | None = None
    sni: str | None = None
    host: str | None = None
    scheme: str | None = None
    method: str | None = None
    url: str | None = None
    path: str | None = None
    http_version: str | None = None
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: bytes = b""
    request_trailers: list[tuple[str, str]] = field(default_factory=list)  # after the body
    request_body_truncated: bool = False
    status_code: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_size: int | None = None
    messages: list[Message] = field(default_factory=list)
    dns_question: str | None = None
    dns_answers: list[str] = field(default_factory=list)  # A/AAAA addresses, in answer order
    error: str | None = None
    # request_size of the flow a copy without payloads was made from (without_payloads), or of
    # the flow in its capture where a reader kept only the first bytes of a giant value
    sent_size: int | None = None
    # what the reader of a capture left out (a giant value cut to the body cap), one line each
    reader_notes: list[str] = field(default_factory=list)

    @property
    def request_size(self) -> int:
        """Bytes the client sent: the request body and its WebSocket/TCP/UDP messages."""
        if self.sent_size is not None:
            return self.sent_size
        return len(self.request_body) + sum(len(m.content) for m in self.messages if m.from_client)

    def without_payloads(self) -> Exchange:
        """A copy without the bodies, messages and header fields, which keeps their size:
        all that is stored of a flow once it has been classified, cheap to hand between
        processes (a crafted flow may hold 300,000 headers)."""
        return replace(self, request_body=b"", messages=[], request_headers=[],
                       response_headers=[], request_trailers=[], sent_size=self.request_size)

    def within(self, limit: int) -> Exchange:
        """This exchange with its request body and each message the client sent cut to their
        first ``limit`` bytes, the only ones the analysis scans, noted as the decoder notes
        them; itself when nothing is longer.  What a 300 MB upload costs to hand over."""
        long_body = len(self.request_body) > limit
        if not long_body and (not self.messages  # an HTTP flow: no generator, once per flow
                              or all(len(m.content) <= limit for m in self.messages)):
            return self
        notes = [*self.reader_notes]
        if long_body:
            notes.append(scanned_note("body", len(self.request_body), limit))
        messages, sent = [], 0
        for message in self.messages:
            if message.from_client and len(message.content) > limit:
                notes.append(scanned_note(f"message {sent}", len(message.content), limit))
                message = replace(message, content=message.content[:limit])
            sent += message.from_client
            messages.append(message)
        return replace(self, request_body=self.request_body[:limit], messages=messages,
                       sent_size=self.request_size, reader_notes=notes)

    def header(self, name: str) -> str | None:
        """The first request header called ``name`` (case-insensitive)."""
        wanted = name.lower()
        for key, value in self.request_headers:
            if key.lower() == wanted:
                return value
        return None


def scanned_note(what: str, length: int, scanned: int) -> str:
    """The note of a body or message longer than the cap (``body of N bytes: only the first
    16777216 scanned``): the same words whether the decoder or a reader cut it."""
    return f"{what} of {length} bytes: only the first {scanned} scanned"


# The moments a datetime can hold (0001-01-01 to 9999-12-31 UTC), in epoch seconds
_EARLIEST, _LATEST = -62135596800.0, 253402300799.0


def is_storable_time(timestamp: object) -> bool:
    """Whether ``timestamp`` is epoch seconds a datetime can hold: a capture's times are
    its own fields, as hostile as the rest (``inf``, ``nan``, ``1e20``, the year 0)."""
    return (isinstance(timestamp, int | float) and not isinstance(timestamp, bool)
            and _EARLIEST <= timestamp <= _LATEST)  # False for nan too


def check_time(exchange: Exchange) -> str | None:
    """A flow whose time is none a datetime can hold gets 0 (1970-01-01); the note says so."""
    if is_storable_time(exchange.timestamp):
        return None
    note = (f"the capture's time of this flow ({str(exchange.timestamp)[:40]}) is no time: "
            "stored as 1970-01-01")
    exchange.timestamp = 0.0
    return note


_CACHED_URL_CHARS = 2048


def split_url(url: str) -> SplitResult:
    """``urllib.parse.urlsplit``, whose cache (128 URLs, with their parts) is for short URLs
    only: a capture of 25 MB URLs kept gigabytes alive in it.  ValueError as urlsplit's."""
    if len(url) > _CACHED_URL_CHARS:
        return urlsplit.__wrapped__(url)  # type: ignore[attr-defined, no-any-return]
    return urlsplit(url)


MAX_URL_CHARS = 1 << 20  # a longer URL (a crafted 25 MB one) is cut here: kept and scanned


def check_url(exchange: Exchange) -> str | None:
    """A URL longer than :data:`MAX_URL_CHARS` is cut there (its path too); the note says so.
    Held twice by each flow (URL and path), read into windows, stored: a 25 MB one cost a
    flow about 500 MB."""
    if len(exchange.url or "") <= MAX_URL_CHARS and len(exchange.path or "") <= MAX_URL_CHARS:
        return None
    length = max(len(exchange.url or ""), len(exchange.path or ""))
    exchange.url = exchange.url[:MAX_URL_CHARS] if exchange.url else exchange.url
    exchange.path = exchange.path[:MAX_URL_CHARS] if exchange.path else exchange.path
    return f"URL of {length} characters: only the first {MAX_URL_CHARS} kept and scanned"


def iso_utc(timestamp: float) -> str:
    """ISO 8601 UTC with a ``Z``: the one time format leakmap prints."""
    moment = datetime.fromtimestamp(timestamp if is_storable_time(timestamp) else 0.0, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
