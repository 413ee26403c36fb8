"""A small asyncio HTTPS load generator: N keep-alive connections, one request at a time each.

Through a proxy it opens ``CONNECT localhost:PORT`` tunnels and speaks TLS
inside them (trusting the proxy's CA); directly it connects to the origin
with TLS.  All connections are opened before the clock starts, so the
numbers are for requests on established keep-alive connections, not for
handshakes.  Requests are pre-encoded bytes and responses are parsed only
as far as Content-Length: the client spends as little CPU as possible.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    wall_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def client_context(cafile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def _connect(
    server_port: int, context: ssl.SSLContext, proxy_port: int | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if proxy_port is None:
        return await asyncio.open_connection(
            "127.0.0.1", server_port, ssl=context, server_hostname="localhost"
        )
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    authority = f"localhost:{server_port}"
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"CONNECT refused: {head[:80]!r}")
    await writer.start_tls(context, server_hostname="localhost")
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at < 0:
        raise ConnectionError(f"response without content-length: {head[:200]!r}")
    stop = lower.find(b"\r\n", at + 2)
    await reader.readexactly(int(lower[at + 17 : stop]))
    return status


async def _load(
    wires: list[bytes], concurrency: int, server_port: int, context: ssl.SSLContext,
    proxy_port: int | None,
) -> LoadResult:
    result = LoadResult()
    connections = await asyncio.gather(
        *(_connect(server_port, context, proxy_port) for _ in range(concurrency))
    )
    next_index = iter(range(len(wires)))
    latencies = result.latencies_ns

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for index in next_index:
            start = time.perf_counter_ns()
            writer.write(wires[index])
            result.sent += 1
            try:
                status = await _read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                result.failed += 1
                result.errors.append(f"{type(e).__name__}: {e}")
                return
            latencies.append(time.perf_counter_ns() - start)
            if status == 200:
                result.ok += 1
            else:
                result.failed += 1
                result.errors.append(f"status {status}")

    started = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in connections))
    result.wall_s = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    for _, writer in connections:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    return result


def run_load(
    wires: list[bytes], concurrency: int, server_port: int, cafile: str,
    proxy_port: int | None = None, timeout: float = 180.0,
) -> LoadResult:
    """Send ``wires`` over ``concurrency`` connections; at most ``timeout`` seconds."""
    context = client_context(cafile)

    async def bounded() -> LoadResult:
        return await asyncio.wait_for(
            _load(wires, concurrency, server_port, context, proxy_port), timeout
        )

    return asyncio.run(bounded())
