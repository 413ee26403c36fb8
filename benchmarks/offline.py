"""Headline offline figures: ``leakmap analyze`` speed and memory, classifier and matcher speed.

* ``analyze_ratio``: a mitmproxy flow file of the 2 KB requests (``payloads.py``,
  written with ``mitmproxy.io.FlowWriter``), read once by a bare
  ``FlowReader`` loop in a fresh interpreter and once by ``leakmap analyze``
  (generated device profile, SQLite in the temporary folder).  Both are timed
  as whole processes, so both include their start-up.  ``leakmap analyze`` is
  stopped after a time budget; then its rate is the rows it committed by then.
* ``classify_mb_s`` / ``match_mb_s``: in this process, ``Classifier.classify``
  of the pipeline that ``leakmap.wiring.build_pipeline(device=...)`` builds,
  and its ``KnownMatcher.search`` alone, over the same bodies.
* ``peak_rss_mb``: ``leakmap analyze`` over ``scripts/make_corpus.py --big``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import har_bench
import micro
import payloads
from workload import Request

REPO = Path(__file__).resolve().parent.parent
_BARE_READER = """
import json, sys, time
start = time.perf_counter()
from mitmproxy import io
imported = time.perf_counter()
flows = 0
with open(sys.argv[1], "rb") as handle:
    for _flow in io.FlowReader(handle).stream():
        flows += 1
done = time.perf_counter()
print("BENCH " + json.dumps({"flows": flows, "import_s": imported - start,
                             "read_s": done - imported}), file=sys.stderr)
"""


def write_flow_file(path: Path, count: int) -> dict[str, Any]:
    """``count`` HTTP flows of the 2 KB mix; size and share of flows with PII."""
    from mitmproxy import io

    requests = payloads.make_requests(count, seed=20)
    with path.open("wb") as handle:
        writer = io.FlowWriter(handle)
        for index, request in enumerate(requests):
            writer.add(micro.mitm_flow_for(request, index))
    return {"flows": count, "bytes": path.stat().st_size,
            "with_pii": sum(r.pii for r in requests) / max(1, count)}


def _bare_pass(flow_file: Path, env: dict[str, str]) -> dict[str, Any]:
    result = har_bench.measure([sys.executable, "-c", _BARE_READER, str(flow_file)], env, 600)
    for line in result.get("stderr_tail", "").splitlines():
        if line.startswith("BENCH "):
            result.update(json.loads(line[6:]))
    return result


def _rows(db_file: Path, run_name: str) -> int:
    try:
        return int(har_bench._db_counts(db_file, run_name)["flows"])
    except sqlite3.Error:  # not created yet
        return 0


def _analyze(flow_file: Path, device: Path, workdir: Path, env: dict[str, str], label: str,
             budget_s: float) -> dict[str, Any]:
    """``leakmap analyze`` of ``flow_file``, timed as a whole process, stopped after ``budget_s``.

    Its end is seen at once; meanwhile its ``flows`` rows are polled once a second
    (SQLite in WAL mode; the CLI commits every 500 flows).  If the budget runs out, the rate is the rows
    committed by the last poll that saw them grow over the time of that poll.
    """
    db_file = workdir / f"analyze-{label}.db"
    command = [str(Path(sys.executable).parent / "leakmap"), "analyze", str(flow_file),
               "--device", str(device), "--db", f"sqlite:///{db_file}", "--run-name", label]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    rows, at, wall = 0, 0.0, 0.0
    while (left := budget_s - (time.perf_counter() - started)) > 0:
        try:  # returns the moment the process ends: a 1 s sleep added 0.5 s to a 7 s run on average
            process.wait(timeout=min(1.0, left))
            wall = time.perf_counter() - started
            break
        except subprocess.TimeoutExpired:
            if (now := _rows(db_file, label)) > rows:
                rows, at = now, time.perf_counter() - started
    capped = process.poll() is None
    if capped:
        process.terminate()
    _, stderr = process.communicate(timeout=60)
    wall = wall or time.perf_counter() - started
    result: dict[str, Any] = {"command": " ".join(command), "wall_s": wall, "capped": capped,
                              "code": process.returncode, "stderr_tail": stderr.decode()[-500:]}
    if not capped:
        result.update(har_bench._db_counts(db_file, label))
        rows, at = result["flows"], wall
    result.update(rows_timed=rows, seconds_timed=at, flows_per_s=rows / at if at else 0.0)
    return result


def analyze_ratio(flow_file: Path, flows: int, device: Path, workdir: Path,
                  env: dict[str, str], budget_s: float) -> dict[str, Any]:
    """Flows/s of ``leakmap analyze`` over flows/s of a bare ``FlowReader`` pass."""
    print(f"  bare FlowReader over {flows:,} flows ...", flush=True)
    bare = _bare_pass(flow_file, env)
    print(f"  leakmap analyze over {flows:,} flows (stopped after {budget_s:.0f} s) ...",
          flush=True)
    leak = _analyze(flow_file, device, workdir, env, "bench-analyze", budget_s)
    bare_rate = flows / bare["wall_s"]
    return {"analyze_ratio": leak["flows_per_s"] / bare_rate, "bare_flows_per_s": bare_rate,
            "leakmap_flows_per_s": leak["flows_per_s"], "analyze_capped": leak["capped"],
            "leakmap_flows_timed": leak["rows_timed"],
            "bare_read_loop_flows_per_s": flows / bare["read_s"] if bare.get("read_s") else None,
            "every_flow_logged": None if leak["capped"] else leak.get("flows") == flows,
            "bare": bare, "leakmap": leak}


def _timed(function: Any, items: list[Any], budget_s: float) -> tuple[float, int]:
    """Seconds spent calling ``function`` on items in order, and how many it got through."""
    clock = time.perf_counter
    spent, done = 0.0, 0
    for item in items:
        start = clock()
        function(item)
        spent += clock() - start
        done += 1
        if spent >= budget_s:
            break
    return spent, done


# The machine's speed moves by half within a minute here (docs/performance.md). So that a
# run tells a slow machine from slow code, a fixed piece of work is timed beside each slice
# of bodies: json.loads of the slice's first few JSON bodies (about 100 kB, a few ms).
SLICE_BODIES = 500
_REFERENCE_BODIES = 50


class _Paced:
    """``function`` over ``items`` slice by slice, each slice beside the reference work."""

    def __init__(self, function: Any, items: list[Any], sizes: list[int],
                 references: list[list[bytes]]) -> None:
        self.function, self.items, self.sizes, self.references = function, items, sizes, references
        self.spent = 0.0
        self.done = 0
        self.slice_mb_s: list[float] = []
        self.reference_s = 0.0
        self.reference_bytes = 0

    def run(self, budget_s: float) -> None:
        """Stops after the slice in which measured time reaches ``budget_s``."""
        for first in range(0, len(self.items), SLICE_BODIES):
            self._reference(self.references[first // SLICE_BODIES])
            spent, done = _timed(self.function, self.items[first : first + SLICE_BODIES],
                                 float("inf"))
            self.spent, self.done = self.spent + spent, self.done + done
            if spent:
                self.slice_mb_s.append(sum(self.sizes[first : first + done]) / 1e6 / spent)
            if self.spent >= budget_s:
                break

    def _reference(self, bodies: list[bytes]) -> None:
        start = time.perf_counter()
        for body in bodies:
            json.loads(body)
        self.reference_s += time.perf_counter() - start
        self.reference_bytes += sum(map(len, bodies))

    def summary(self, name: str) -> dict[str, Any]:
        """``name``'s figure over the reference's, in the same minutes, and the slices' spread."""
        rates = sorted(self.slice_mb_s) or [0.0]
        reference = self.reference_bytes / 1e6 / self.reference_s if self.reference_s else 0.0
        mb_s = sum(self.sizes[: self.done]) / 1e6 / self.spent if self.spent else 0.0
        return {f"{name}_json_loads_mb_s": reference,
                f"{name}_per_json_loads": mb_s / reference if reference else None,
                f"{name}_slice_mb_s": {"min": rates[0], "median": rates[len(rates) // 2],
                                       "max": rates[-1], "slices": len(self.slice_mb_s)}}


def classify_and_match(requests: list[Request], device: Path, budget_s: float) -> dict[str, Any]:
    """MB/s of decoding + classification, and of the known-value matcher, over the same bodies.

    Classification stops after ``budget_s`` of measured time (the bodies
    cycle through ten templates, so any prefix of a few MB is the same mix);
    the result says how much of the text it covered.
    """
    from leakmap.wiring import build_pipeline

    started = time.perf_counter()
    assembled = build_pipeline(device=str(device))
    build_s = time.perf_counter() - started
    classifier, matcher = assembled.pipeline.classifier, assembled.pipeline.classifier.known
    bodies = [r.body for r in requests]
    sizes = [len(body) for body in bodies]
    exchanges = [micro.exchange_for(r, i) for i, r in enumerate(requests)]
    for exchange in exchanges[:20]:  # warm caches (key names, regexes, geolocation)
        assembled.pipeline.process(exchange)

    def match(body: bytes) -> None:
        for _hit in matcher.search(body.decode("utf-8", "replace")):
            pass

    references = [[body for body in bodies[first : first + SLICE_BODIES] if body[:1] == b"{"]
                  [:_REFERENCE_BODIES] for first in range(0, len(bodies), SLICE_BODIES)]
    matching = _Paced(match, bodies, sizes, references)
    matching.run(float("inf"))
    classifying = _Paced(classifier.classify, exchanges, sizes, references)
    classifying.run(budget_s)
    match_s, classify_s, classified = matching.spent, classifying.spent, classifying.done
    process_s, processed = _timed(assembled.pipeline.process, exchanges, budget_s / 4)
    findings = sum(bool(classifier.classify(e).findings) for e in exchanges[:100])
    assembled.resolver.close()
    mb = 1e6  # MB = 10^6 bytes, as in MB/s
    return {
        "classify_mb_s": sum(sizes[:classified]) / mb / classify_s,
        "match_mb_s": sum(sizes) / mb / match_s,
        "pipeline_process_mb_s": sum(sizes[:processed]) / mb / process_s,
        "text_mb": sum(sizes) / mb, "bodies": len(bodies),
        "classify_mb_covered": sum(sizes[:classified]) / mb, "classify_bodies": classified,
        "classify_ms_per_2kb_body": classify_s / classified * 1e3,
        "pipeline_process_mb_covered": sum(sizes[:processed]) / mb,
        "match_mb_covered": sum(sizes) / mb,
        "first_100_bodies_with_findings": findings,
        "build_pipeline_s": build_s,
        "automaton_words": len(matcher.words), "digest_entries": len(matcher.digests),
        **classifying.summary("classify"), **matching.summary("match"),
    }


def corpus_peak_rss(device: Path, workdir: Path, env: dict[str, str], big: bool = True,
                    files: tuple[str, ...] = ("har", "flow")) -> dict[str, Any]:
    """Peak RSS of ``leakmap analyze`` over the hostile corpus (with the 100 MB body if ``big``).

    ``files``: ``har`` (where the whole 100 MB body sits in one JSON string:
    the memory peak) and ``flow`` (where the bombs stay compressed).
    """
    folder = workdir / "corpus"
    formats = [arg for name in files for arg in ("--format", name)]
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_corpus.py"), str(folder),
                    *formats, *(["--big"] if big else [])], check=True, capture_output=True,
                   env=env, timeout=300)
    captures = [folder / f"hostile.{name}" for name in files]
    db_file = workdir / "corpus.db"
    command = [str(Path(sys.executable).parent / "leakmap"), "analyze", *map(str, captures),
               "--device", str(device), "--db", f"sqlite:///{db_file}", "--run-name", "corpus"]
    result = har_bench.measure(command, env, 900)
    result.update(command=" ".join(command), peak_rss_mb=result["max_rss_kb"] / 1024,
                  capture_mb={p.name: p.stat().st_size / 2**20 for p in captures})
    if "terminated by signal" in result.get("stderr_tail", ""):  # /usr/bin/time says 0 then
        result["code"] = result["code"] or -1
    if db_file.exists():
        result.update(har_bench._db_counts(db_file, "corpus"))
    # the figure counts only if the run went through the whole corpus
    result["complete"] = result["code"] == 0 and result.get("run_status") == "completed"
    return result
