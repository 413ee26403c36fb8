"""Write the hostile corpus (tests/corpus.py) to a folder, for ``leakmap analyze`` or a benchmark.

    .venv/bin/python scripts/make_corpus.py OUTDIR                 # hostile.har + hostile.flow
    .venv/bin/python scripts/make_corpus.py OUTDIR --big           # also the 100 MB body
    .venv/bin/python scripts/make_corpus.py OUTDIR --format raw     # one folder per case
    .venv/bin/leakmap analyze OUTDIR/hostile.har OUTDIR/hostile.flow --db sqlite:///h.db

Formats (``--format``, repeatable; default ``har`` and ``flow``):

- ``har``: ``hostile.har``, HAR 1.2; binary bodies as ``"encoding": "base64"``.
  HAR stores bodies decoded, so a HAR reader may drop ``Content-Encoding``:
  there the decompression bombs are only compressed bytes.
- ``flow``: ``hostile.flow``, a mitmproxy flow file (needs mitmproxy, which
  leakmap installs); bodies keep their ``Content-Encoding``, so the bombs
  stay bombs.
- ``raw``: ``raw/<name>/`` with ``request.json`` (method, URL, headers,
  kind, error, WebSocket messages as base64) and ``body.bin`` (the request
  body exactly as sent, still content-encoded): no HAR or mitmproxy needed.

``--big`` adds the 100 MB body (about 120 MB more in the HAR, where its
quotes are escaped, and in ``leakmap analyze``'s memory while it reads it).  ``--verify``
decompresses every bomb in full (about 15 s) and checks it yields 1 GiB of
zeros.  The output is the same on every run.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import corpus  # noqa: E402


def write_raw(cases: list[corpus.Case], folder: Path) -> None:
    for name, exchange in cases:
        where = folder / "raw" / name
        where.mkdir(parents=True, exist_ok=True)
        (where / "body.bin").write_bytes(exchange.request_body)
        meta = {
            "name": name, "flow_id": exchange.flow_id, "kind": exchange.kind,
            "timestamp": exchange.timestamp, "method": exchange.method, "url": exchange.url,
            "server_ip": exchange.server_ip, "server_port": exchange.server_port,
            "request_headers": exchange.request_headers, "status_code": exchange.status_code,
            "error": exchange.error,
            "messages": [{"from_client": m.from_client, "is_text": m.is_text,
                          "content_base64": base64.b64encode(m.content).decode("ascii")}
                         for m in exchange.messages],
        }
        (where / "request.json").write_text(json.dumps(meta, indent=1) + "\n")


def _count_zlib(data: bytes, wbits: int) -> tuple[int, bool]:
    decoder, total, pending = zlib.decompressobj(wbits), 0, data
    zeros = True
    while pending:
        chunk = decoder.decompress(pending, 1 << 24)
        zeros = zeros and not chunk.strip(b"\0")
        total, pending = total + len(chunk), decoder.unconsumed_tail
    return total, zeros and decoder.eof


def verify_bombs() -> None:
    import brotli
    import zstandard

    sizes = {
        "gzip": _count_zlib(corpus.gzip_bomb(), 16 + zlib.MAX_WBITS),
        "deflate": _count_zlib(corpus.zlib_bomb(), zlib.MAX_WBITS),
    }
    decoder = brotli.Decompressor()
    total, zeros = 0, True
    chunk = decoder.process(corpus.brotli_bomb(), output_buffer_limit=1 << 24)
    while True:
        total, zeros = total + len(chunk), zeros and not chunk.strip(b"\0")
        if decoder.is_finished():
            break
        chunk = decoder.process(b"", output_buffer_limit=1 << 24)
    sizes["br"] = (total, zeros)
    reader = zstandard.ZstdDecompressor().stream_reader(corpus.zstd_bomb())
    total, zeros = 0, True
    while chunk := reader.read(1 << 24):
        total, zeros = total + len(chunk), zeros and not chunk.strip(b"\0")
    sizes["zstd"] = (total, zeros)
    for name, (size, zeros) in sizes.items():
        print(f"{name:8} bomb expands to {size:,} bytes{'' if zeros else ' (NOT all zeros)'}")
        if size < corpus.BOMB_SIZE or not zeros:
            raise SystemExit(f"{name} bomb is broken")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path, help="folder to write into (created if missing)")
    parser.add_argument("--format", dest="formats", action="append",
                        choices=("har", "flow", "raw"), help="what to write (repeatable)")
    parser.add_argument("--big", action="store_true", help="include the 100 MB body")
    parser.add_argument("--verify", action="store_true", help="decompress every bomb in full")
    args = parser.parse_args()

    formats = args.formats or ["har", "flow"]
    args.outdir.mkdir(parents=True, exist_ok=True)
    cases = list(corpus.all_cases(big=args.big))
    if args.verify:
        verify_bombs()
    written = []
    if "har" in formats:
        corpus.write_har(cases, args.outdir / "hostile.har")
        written.append(args.outdir / "hostile.har")
    if "flow" in formats:
        corpus.write_flows(cases, args.outdir / "hostile.flow")
        written.append(args.outdir / "hostile.flow")
    if "raw" in formats:
        write_raw(cases, args.outdir)
        written.append(args.outdir / "raw")
    for path in written:
        print(path)
    print(f"{len(cases)} cases: {', '.join(name for name, _ in cases)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
