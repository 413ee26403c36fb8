"""Peak memory of ``leakmap analyze`` over captures of giant bodies, flow file and HAR.

    .venv/bin/python benchmarks/giant.py [--sizes 500 8x100] [--keep]

Each size is one capture per format: ``500`` is one flow with a 500 MB JSON body (a
known IMEI at its start, then 500 MB of one letter) and a small flow after it; ``8x100``
is eight flows of 100 MB bodies in a row, then a small one.  Every capture is analysed
by a fresh ``leakmap analyze`` (default settings, ``--workers auto``) under
``/usr/bin/time -v``; the line per capture gives its size on disk, the peak RSS, the
seconds, and whether every flow was logged with the IMEI found.  Needs about twice the
largest capture in free disk space.  Not part of ``python -m benchmarks`` (which stays
under 5 minutes): its ``peak_rss_mb`` covers the hostile corpus with its 100 MB body.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DEVICE = HERE.parent / "samples" / "redmi-1s.yaml"
IMEI = "865312345678901"  # the sample device's: a known value
MB = 1 << 20


def _bodies(count: int, size: int) -> list[bytes]:
    head = b'{"imei": "' + IMEI.encode() + b'", "pad": "'
    return [head + bytes([65 + n]) * (size - len(head) - 2) + b'"}' for n in range(count)]


def write_flows(path: Path, count: int, size: int) -> None:
    from mitmproxy import io
    from mitmproxy.test import tflow

    with path.open("wb") as handle:
        writer = io.FlowWriter(handle)
        for body in [*_bodies(count, size), b'{"imei": "%b"}' % IMEI.encode()]:
            flow = tflow.tflow(resp=True)
            flow.request.headers["content-type"] = "application/json"
            flow.request.content = body
            writer.add(flow)


def write_har(path: Path, count: int, size: int) -> None:
    def entry(text: str) -> dict:
        return {"startedDateTime": "2014-08-04T09:15:05.000Z", "time": 1, "request": {
            "method": "POST", "url": "https://api.example.cn/up", "httpVersion": "HTTP/1.1",
            "headers": [], "queryString": [], "cookies": [], "headersSize": -1,
            "bodySize": len(text), "postData": {"mimeType": "application/json", "text": text}},
            "response": {"status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
                         "headers": [], "cookies": [], "content": {"size": 0, "mimeType": "x/y"},
                         "redirectURL": "", "headersSize": -1, "bodySize": 0},
            "cache": {}, "timings": {"send": 0, "wait": 0, "receive": 0}}

    with path.open("w", encoding="utf-8") as handle:  # entry by entry: the writer stays small
        handle.write('{"log": {"version": "1.2", "creator": {"name": "giant", "version": "1"}, '
                     '"entries": [')
        for body in _bodies(count, size):
            handle.write(json.dumps(entry(body.decode())) + ", ")
        handle.write(json.dumps(entry(json.dumps({"imei": IMEI}))) + "]}}")


def measure(capture: Path, folder: Path, flows: int) -> dict:
    db = folder / f"{capture.name}.db"
    result = subprocess.run(["/usr/bin/time", "-v", str(BIN / "leakmap"), "analyze", str(capture),
                             "--device", str(DEVICE), "--db", f"sqlite:///{db}", "--run-name",
                             capture.stem], capture_output=True, text=True, timeout=900)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr)
    logged = found = 0
    if db.exists():
        with sqlite3.connect(db) as connection:
            logged = connection.execute("SELECT count(*) FROM flows").fetchone()[0]
            found = connection.execute(
                "SELECT count(DISTINCT flow_pk) FROM findings WHERE data_type = 'imei'").fetchone()[0]
    return {"capture": capture.name, "mb_on_disk": round(capture.stat().st_size / MB),
            "peak_rss_mb": round(int(peak.group(1)) / 1024) if peak else None,
            "wall": wall.group(1) if wall else None, "exit_code": result.returncode,
            "flows_logged": f"{logged}/{flows}", "flows_with_the_imei": f"{found}/{flows}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["500", "8x100"],
                        help="N (one body of N MB) or CxN (C bodies of N MB)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="leakmap-giant-"))
    try:
        for size in options.sizes:
            count, _, each = size.rpartition("x")
            count_n, each_mb = int(count or 1), int(each)
            for suffix, write in ((".flow", write_flows), (".har", write_har)):
                capture = folder / f"giant-{size}{suffix}"
                write(capture, count_n, each_mb * MB)
                print(json.dumps(measure(capture, folder, count_n + 1)), flush=True)
                capture.unlink()
    finally:
        if options.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
