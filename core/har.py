"""HAR 1.2 files to :class:`Exchange` objects.

Each entry's ``serverIPAddress`` is the server address.  Flow ids are derived
from the file's SHA-256 and the entry's index, so analysing the same file
twice gives the same ids.  Browser extras (``_webSocketMessages``) are read
where present.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from leakmap.core.exchange import Exchange, Message


def _timestamp(text: Any) -> float | None:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:  # HAR requires an offset; read a bare time as UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _object(value: Any) -> dict[str, Any]:
    """A HAR object, or an empty one where the file holds something else."""
    return value if isinstance(value, dict) else {}


def _server_ip(text: Any) -> str | None:
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(str(text).strip("[]")))
    except ValueError:
        return None


def _body(post: dict[str, Any]) -> bytes:
    text = post.get("text")
    if isinstance(text, str):
        if post.get("encoding") == "base64":
            try:
                return base64.b64decode(text)
            except (binascii.Error, ValueError):
                return text.encode("utf-8", "surrogateescape")
        return text.encode("utf-8", "surrogateescape")
    params = post.get("params")
    pairs = [f"{p.get('name', '')}={p.get('value', '')}"
             for p in (params if isinstance(params, list) else []) if isinstance(p, dict)]
    return "&".join(pairs).encode()


def _headers(items: Any) -> list[tuple[str, str]]:
    return [
        (str(item["name"]), str(item.get("value", "")))
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict) and "name" in item
    ]


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd")  # gzip, zstd


def _still_encoded(body: bytes) -> bool:
    """The exporter kept the compressed bytes (gzip or zstd magic, or no text at all)."""
    if body.startswith(_COMPRESSED_MAGIC):
        return True
    try:
        body[:4096].decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < 4092  # not just a character cut at the window's end
    return False


def _request_headers(request: dict[str, Any], body: bytes) -> list[tuple[str, str]]:
    headers = _headers(request.get("headers"))
    if not _still_encoded(body):
        # HAR stores bodies decoded: their Content-Encoding no longer applies
        headers = [(name, value) for name, value in headers if name.lower() != "content-encoding"]
    mime = _object(request.get("postData")).get("mimeType")
    if mime and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("content-type", str(mime)))
    return headers


def _websocket(entry: dict[str, Any]) -> list[Message]:
    messages = []
    items = entry.get("_webSocketMessages")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            data = str(item.get("data", ""))
            raw = data.encode("utf-8", "surrogateescape")
            if item.get("opcode") == 2:
                with contextlib.suppress(binascii.Error, ValueError):
                    raw = base64.b64decode(data)
            messages.append(Message(item.get("type") == "send", raw, item.get("opcode") == 1))
    return messages


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": the decoder notes and scans it as text
        return SplitResult("", "", "", "", "")


def _port(parts: SplitResult) -> int | None:
    try:
        explicit = parts.port
    except ValueError:  # out of range
        return None
    return explicit or {"https": 443, "wss": 443, "http": 80, "ws": 80}.get(parts.scheme)


def _problems(entry: dict[str, Any], timestamp: float | None, status: Any) -> str | None:
    found = []
    if timestamp is None:
        found.append(f"startedDateTime {str(entry.get('startedDateTime'))[:40]!r} is not a time")
    if not isinstance(entry.get("request"), dict):
        found.append("entry has no request object")
    if not status:
        found.append("no response")
    return "; ".join(found) or None


def exchange_from_entry(entry: dict[str, Any], flow_id: str) -> Exchange:
    """One HAR entry.  A malformed part is left out and named in ``error``."""
    request = _object(entry.get("request"))
    response = _object(entry.get("response"))
    url = str(request.get("url", ""))
    parts = _split(url)
    messages = _websocket(entry)
    status = response.get("status")
    body = _body(_object(request.get("postData")))
    timestamp = _timestamp(entry.get("startedDateTime"))
    size = _object(response.get("content")).get("size")
    return Exchange(
        flow_id=flow_id,
        kind="websocket" if messages else "http",
        timestamp=timestamp if timestamp is not None else 0.0,
        server_ip=_server_ip(entry.get("serverIPAddress")),
        server_port=_port(parts),
        host=parts.hostname,
        sni=parts.hostname if parts.scheme in ("https", "wss") else None,
        scheme=parts.scheme or None,
        method=str(request.get("method", "")) or None,
        url=url or None,
        path=parts.path,
        http_version=str(request.get("httpVersion", "")) or None,
        request_headers=_request_headers(request, body),
        request_body=body,
        status_code=status if isinstance(status, int) and status > 0 else None,
        response_headers=_headers(response.get("headers")),
        response_size=size if isinstance(size, int) and size >= 0 else None,
        messages=messages,
        error=_problems(entry, timestamp, status),
    )


def read_har(path: Path) -> Iterator[Exchange]:
    """Exchanges of a HAR file.  Raises ValueError if it is not HAR.

    The file is parsed whole with the standard json module: a streaming
    parser (ijson) was measured 20 times slower on large bodies and built
    gigabytes for deeply nested junk (docs/performance.md).
    """
    raw = path.read_bytes()
    try:
        entries = json.loads(raw)["log"]["entries"]
    except RecursionError as e:
        raise ValueError(f"{path}: not a HAR 1.2 file (JSON nested too deeply)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a HAR 1.2 file ({_short(e)})") from e
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a HAR 1.2 file (log.entries is not a list)")
    digest = hashlib.sha256(raw).hexdigest()
    del raw
    for index in range(len(entries)):
        entry, entries[index] = entries[index], None  # let each entry go once it is read
        yield _exchange_or_note(entry, index, _flow_id(digest, index))


def _flow_id(digest: str, index: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"har:{digest}:{index}"))


def _exchange_or_note(entry: Any, index: int, flow_id: str) -> Exchange:
    try:
        if not isinstance(entry, dict):
            raise TypeError("not an object")
        return exchange_from_entry(entry, flow_id)
    except (TypeError, AttributeError, ValueError, RecursionError) as e:
        # still a flow in the capture: logged, with what was wrong
        return Exchange(flow_id=flow_id, kind="http", timestamp=0.0,
                        error=f"HAR entry {index} unreadable: {_short(e)}")


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
