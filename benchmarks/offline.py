"""Headline offline figures: ``leakmap analyze`` speed and memory, classifier and matcher speed.

* ``analyze_ratio``: a mitmproxy flow file of the 2 KB requests (``payloads.py``,
  written with ``mitmproxy.io.FlowWriter``), read once by a bare
  ``FlowReader`` loop in a fresh interpreter and once by ``leakmap analyze``
  (generated device profile, SQLite in the temporary folder).  Both are timed
  as whole processes with ``/usr/bin/time -v`` (``har_bench.measure``), so
  both include their start-up; a one-flow file gives leakmap's fixed cost.
* ``classify_mb_s`` / ``match_mb_s``: in this process, ``Classifier.classify``
  of the pipeline that ``leakmap.wiring.build_pipeline(device=...)`` builds,
  and its ``KnownMatcher.search`` alone, over the same bodies.
* ``peak_rss_mb``: ``leakmap analyze`` over ``scripts/make_corpus.py --big``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import har_bench
import micro
import payloads

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


def _analyze(flow_file: Path, device: Path, workdir: Path, env: dict[str, str],
             label: str) -> dict[str, Any]:
    db_file = workdir / f"analyze-{label}.db"
    command = [str(Path(sys.executable).parent / "leakmap"), "analyze", str(flow_file),
               "--device", str(device), "--db", f"sqlite:///{db_file}", "--run-name", label]
    result = har_bench.measure(command, env, 900)
    result["command"] = " ".join(command)
    if db_file.exists():
        result.update(har_bench._db_counts(db_file, label))
    return result


def analyze_ratio(flows: int, device: Path, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Flows/s of ``leakmap analyze`` over flows/s of a bare ``FlowReader`` pass."""
    flow_file, one = workdir / "bench.flow", workdir / "one.flow"
    written = write_flow_file(flow_file, flows)
    write_flow_file(one, 1)
    print(f"  bare FlowReader over {flows:,} flows ...", flush=True)
    bare = _bare_pass(flow_file, env)
    print(f"  leakmap analyze over {flows:,} flows ...", flush=True)
    leak = _analyze(flow_file, device, workdir, env, "bench-analyze")
    startup = _analyze(one, device, workdir, env, "bench-analyze-one")
    bare_rate, leak_rate = flows / bare["wall_s"], flows / leak["wall_s"]
    net = max(1e-9, leak["wall_s"] - startup["wall_s"])
    return {"analyze_ratio": leak_rate / bare_rate, "file": written,
            "bare_flows_per_s": bare_rate, "leakmap_flows_per_s": leak_rate,
            "leakmap_flows_per_s_net_of_startup": (flows - 1) / net,
            "bare_read_loop_flows_per_s": flows / bare["read_s"] if bare.get("read_s") else None,
            "leakmap_startup_s": startup["wall_s"],
            "every_flow_logged": leak.get("flows") == flows,
            "bare": bare, "leakmap": leak, "leakmap_one_flow": startup}


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


def classify_and_match(total_bytes: int, device: Path, budget_s: float) -> dict[str, Any]:
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
    requests = payloads.make_bytes(total_bytes)
    bodies = [r.body for r in requests]
    sizes = [len(body) for body in bodies]
    exchanges = [micro.exchange_for(r, i) for i, r in enumerate(requests)]
    for exchange in exchanges[:20]:  # warm caches (key names, regexes, geolocation)
        assembled.pipeline.process(exchange)

    def match(body: bytes) -> None:
        for _hit in matcher.search(body.decode("utf-8", "replace")):
            pass

    match_s, _ = _timed(match, bodies, float("inf"))
    classify_s, classified = _timed(classifier.classify, exchanges, budget_s)
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
        "automaton_words": len(matcher.automaton), "digest_entries": len(matcher.digests),
    }


def corpus_peak_rss(device: Path, workdir: Path, env: dict[str, str],
                    big: bool = True) -> dict[str, Any]:
    """Peak RSS of ``leakmap analyze`` over the hostile corpus (with the 100 MB body if ``big``)."""
    folder = workdir / "corpus"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_corpus.py"), str(folder),
                    *(["--big"] if big else [])], check=True, capture_output=True, env=env,
                   timeout=300)
    captures = [folder / "hostile.har", folder / "hostile.flow"]
    db_file = workdir / "corpus.db"
    command = [str(Path(sys.executable).parent / "leakmap"), "analyze", *map(str, captures),
               "--device", str(device), "--db", f"sqlite:///{db_file}", "--run-name", "corpus"]
    result = har_bench.measure(command, env, 900)
    result.update(command=" ".join(command), peak_rss_mb=result["max_rss_kb"] / 1024,
                  capture_mb={p.name: p.stat().st_size / 2**20 for p in captures})
    if db_file.exists():
        result.update(har_bench._db_counts(db_file, "corpus"))
    return result
