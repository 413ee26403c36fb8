"""``leakmap analyze`` over a large generated HAR: wall time and peak RSS.

The HAR holds the workload mix (bodies stored decoded, as HAR does) with
public server addresses.  Each run is measured with ``/usr/bin/time -v``;
without it, a small Python parent process reports its only child's
``getrusage(RUSAGE_CHILDREN)``.  A one-entry HAR is measured the same way so
the fixed cost (interpreter, imports, geolocation databases, migrations)
can be told apart from the per-entry cost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from workload import HOST, PUBLIC_IPS, USER_AGENT, decoded_body, make_requests

TIME = "/usr/bin/time"
_RUSAGE_WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "wall_s": wall, "user_s": usage.ru_utime,
                  "sys_s": usage.ru_stime, "max_rss_kb": usage.ru_maxrss}))
"""


def _entry(index: int, request: Any) -> dict[str, Any]:
    body = decoded_body(request).decode("utf-8", "replace")
    headers = [{"name": "Host", "value": HOST}, {"name": "User-Agent", "value": USER_AGENT}]
    headers += [{"name": k, "value": v} for k, v in request.headers if k != "Content-Type"]
    mime = dict(request.headers).get("Content-Type", "application/octet-stream")
    seconds = index // 10
    return {
        "startedDateTime": f"2014-08-04T{9 + seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
                           f"{seconds % 60:02d}.{index % 10}00Z",
        "time": 120,
        "serverIPAddress": PUBLIC_IPS[index % len(PUBLIC_IPS)],
        "request": {
            "method": request.method, "url": f"https://{HOST}{request.target}",
            "httpVersion": "HTTP/1.1", "headers": headers, "queryString": [], "cookies": [],
            "headersSize": -1, "bodySize": len(body),
            "postData": {"mimeType": mime, "text": body},
        },
        "response": {
            "status": 200, "statusText": "OK", "httpVersion": "HTTP/1.1",
            "headers": [{"name": "Content-Type", "value": "application/json"}], "cookies": [],
            "content": {"size": 12, "mimeType": "application/json", "text": '{"ok": true}'},
            "redirectURL": "", "headersSize": -1, "bodySize": 12,
        },
        "cache": {},
        "timings": {"send": 1, "wait": 100, "receive": 19},
    }


def write_har(path: Path, entries: int) -> int:
    """A HAR 1.2 file with ``entries`` entries; its size in bytes."""
    document = {"log": {"version": "1.2", "creator": {"name": "leakmap benchmark", "version": "1"},
                        "pages": [], "entries": [_entry(i, r) for i, r in
                                                 enumerate(make_requests(entries, seed=20))]}}
    path.write_text(json.dumps(document), encoding="utf-8")
    return path.stat().st_size


def _parse_time_v(text: str) -> dict[str, Any]:
    def field(label: str) -> str:
        match = re.search(rf"^\s*{re.escape(label)}:\s*(.+)$", text, re.MULTILINE)
        return match.group(1).strip() if match else ""

    elapsed = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    seconds = 0.0
    for part in elapsed.split(":"):
        seconds = seconds * 60 + float(part)
    return {
        "wall_s": seconds,
        "user_s": float(field("User time (seconds)") or 0),
        "sys_s": float(field("System time (seconds)") or 0),
        "max_rss_kb": int(field("Maximum resident set size (kbytes)") or 0),
        "code": int(field("Exit status") or 0),
    }


def measure(command: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Wall, CPU and peak RSS of ``command`` (one process tree, measured alone)."""
    if os.access(TIME, os.X_OK):
        done = subprocess.run([TIME, "-v", *command], capture_output=True, text=True, env=env,
                              timeout=timeout)
        result = _parse_time_v(done.stderr)
        result["tool"] = f"{TIME} -v"
        result["stderr_tail"] = done.stderr.split("\tCommand being timed")[0].strip()[-500:]
    else:
        done = subprocess.run([sys.executable, "-c", _RUSAGE_WRAPPER, *command],
                              capture_output=True, text=True, env=env, timeout=timeout)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["tool"] = "getrusage(RUSAGE_CHILDREN) in a fresh parent"
        result["stderr_tail"] = done.stderr[-500:]
    return result


def _db_counts(db_file: Path, run_name: str) -> dict[str, Any]:
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as connection:
        flows, findings = connection.execute(
            "SELECT count(*), coalesce(sum(f.finding_count), 0) FROM flows f "
            "JOIN runs r ON f.run_id = r.id WHERE r.name = ?", (run_name,)).fetchone()
        status = connection.execute("SELECT status FROM runs WHERE name = ?",
                                    (run_name,)).fetchone()
    return {"flows": flows, "findings": findings, "run_status": status[0] if status else None}


def run(entries: int, device: Path, workdir: Path, env: dict[str, str], leakmap: str,
        timeout: float = 400) -> dict[str, Any]:
    results: dict[str, Any] = {"entries": entries}
    for label, count in (("one_entry", 1), ("large", entries)):
        har = workdir / f"bench-{count}.har"
        size = write_har(har, count)
        db_file = workdir / f"analyze-{count}.db"
        run_name = f"bench-analyze-{count}"
        command = [leakmap, "analyze", str(har), "--device", str(device),
                   "--db", f"sqlite:///{db_file}", "--run-name", run_name]
        measured = measure(command, env, timeout)
        measured.update(entries=count, har_bytes=size, command=" ".join(command))
        measured.update(_db_counts(db_file, run_name) if db_file.exists() else {})
        results[label] = measured
        har.unlink()
    large, small = results["large"], results["one_entry"]
    net = max(1e-9, large["wall_s"] - small["wall_s"])
    results["per_entry_ms"] = net / max(1, entries - 1) * 1e3
    results["entries_per_s"] = entries / max(1e-9, large["wall_s"])
    results["entries_per_s_net_of_startup"] = (entries - 1) / net
    results["rss_growth_mb"] = (large["max_rss_kb"] - small["max_rss_kb"]) / 1024
    results["time_tool_present"] = shutil.which(TIME) is not None
    return results
