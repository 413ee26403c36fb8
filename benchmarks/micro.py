"""In-process timings of leakmap's per-flow work, without any network.

* ``Classifier.classify`` and ``Pipeline.process`` (classify + geolocation +
  masking/keyed hash) over the workload mix, with the sample device profile
  and with none (policy patterns and key names only);
* the addon glue around them in the live proxy: turning a mitmproxy flow into
  an ``Exchange``, ``Inspector._keep`` (the summary into ``flow.metadata``, the
  record cached on the flow), reading it back with ``flow_record`` (the Review
  and Recorder addons each call it: cached in the live proxy, rebuilt from the
  metadata for flows read from a file), and one ``asyncio.to_thread`` hand-off;
* the store: ``write_records`` in batches of 500 into SQLite, per flow.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workload import HOST, PUBLIC_IPS, USER_AGENT, Request, make_requests


def summarize_ns(samples: list[int]) -> dict[str, float]:
    """Mean, median, p95, p99 and max of nanosecond samples, in microseconds."""
    ordered = sorted(samples)
    count = len(ordered)

    def at(q: float) -> float:
        return ordered[min(count - 1, int(q * count))] / 1e3

    return {
        "n": count,
        "mean_us": statistics.fmean(ordered) / 1e3,
        "p50_us": at(0.50),
        "p95_us": at(0.95),
        "p99_us": at(0.99),
        "max_us": ordered[-1] / 1e3,
    }


def exchange_for(request: Request, index: int) -> Any:
    from leakmap.core.exchange import Exchange

    return Exchange(
        flow_id=f"bench-{index}",
        kind="http",
        timestamp=1_407_000_000.0 + index,
        client_ip="10.0.0.2",
        client_port=40000 + index % 20000,
        server_ip=PUBLIC_IPS[index % len(PUBLIC_IPS)],
        server_port=443,
        sni=HOST,
        host=HOST,
        scheme="https",
        method=request.method,
        url=f"https://{HOST}{request.target}",
        path=request.target,
        http_version="HTTP/1.1",
        # the headers the load generator sends, so both see the same leaves
        request_headers=[("Host", HOST), ("User-Agent", USER_AGENT), *request.headers,
                         ("Content-Length", str(len(request.body)))],
        request_body=request.body,
        status_code=200,
        response_headers=[("Content-Type", "application/json"), ("Content-Length", "12")],
        response_size=12,
    )


def mitm_flow_for(request: Request, index: int) -> Any:
    from mitmproxy import http
    from mitmproxy.test import tflow

    headers = http.Headers(
        [(b"Host", HOST.encode()), (b"User-Agent", USER_AGENT.encode()),
         *((k.encode(), v.encode()) for k, v in request.headers),
         (b"Content-Length", str(len(request.body)).encode())]
    )
    mitm_request = http.Request(
        host=HOST, port=443, method=request.method.encode(), scheme=b"https", authority=b"",
        path=request.target.encode(), http_version=b"HTTP/1.1", headers=headers,
        content=request.body, trailers=None, timestamp_start=1_407_000_000.0 + index,
        timestamp_end=1_407_000_000.01 + index,
    )
    mitm_request.raw_content = request.body  # keep a gzip body still encoded, as on the wire
    flow = tflow.tflow(req=mitm_request, resp=True)
    flow.server_conn.peername = (PUBLIC_IPS[index % len(PUBLIC_IPS)], 443)
    flow.server_conn.address = (HOST, 443)
    flow.server_conn.sni = HOST
    return flow


def _time_calls(function: Callable[[Any], Any], items: list[Any], iterations: int) -> list[int]:
    for item in items:  # warm caches (geolocation, regexes) before measuring
        function(item)
    samples = []
    clock = time.perf_counter_ns
    for index in range(iterations):
        item = items[index % len(items)]
        start = clock()
        function(item)
        samples.append(clock() - start)
    return samples


def _per_template(samples: list[int], requests: list[Request]) -> dict[str, float]:
    buckets: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        buckets[requests[index % len(requests)].template].append(sample)
    return {name: statistics.fmean(values) / 1e3 for name, values in buckets.items()}


def _to_thread_overhead(count: int) -> dict[str, float]:
    def noop() -> None:
        return None

    async def main() -> list[int]:
        samples = []
        for _ in range(count):
            start = time.perf_counter_ns()
            await asyncio.to_thread(noop)
            samples.append(time.perf_counter_ns() - start)
        return samples

    return summarize_ns(asyncio.run(main()))


# Steps of Classifier.classify whose share of the time is reported.
PROFILED = (
    ("core/decode.py", "exchange_leaves"),
    ("core/classify.py", "_known_hits"),
    ("core/classify.py", "_known_phone_numbers"),
    ("core/known.py", "search"),
    ("core/classify.py", "_pattern_hits"),
    ("core/classify.py", "_key_hits"),
    ("core/classify.py", "_location_hits"),
    ("core/classify.py", "_explained"),
)


def profile_shares(classify: Callable[[Any], Any], items: list[Any]) -> dict[str, float]:
    """Share of ``classify``'s time spent in each step of PROFILED (under cProfile).

    cProfile slows everything down, unevenly: read these as rough proportions.
    """
    profiler = cProfile.Profile()
    profiler.enable()
    for item in items:
        classify(item)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(cumulative for (path, _, name), (_, _, _, cumulative, _) in stats.items()
                if name == "classify" and path.endswith("core/classify.py"))
    shares = {}
    for suffix, function in PROFILED:
        cumulative = sum(value[3] for (path, _, name), value in stats.items()
                         if name == function and path.endswith(suffix))
        shares[f"{suffix.split('/')[-1]}:{function}"] = cumulative / total if total else 0.0
    return shares


def run(iterations: int, device: Path, db_batches: int) -> dict[str, Any]:
    from leakmap.addons.flows import exchange_from_flow
    from leakmap.addons.inspector import METADATA_KEY, Inspector, flow_record
    from leakmap.core.pipeline import record_summary
    from leakmap.store.db import open_store, start_run, write_records
    from leakmap.wiring import build_pipeline

    requests = make_requests(200)
    exchanges = [exchange_for(request, index) for index, request in enumerate(requests)]
    results: dict[str, Any] = {"distinct_requests": len(requests), "iterations": iterations}

    with tempfile.TemporaryDirectory(prefix="leakmap-micro-") as tmp:
        key_file = str(Path(tmp) / "hash.key")
        started = time.perf_counter()
        with_device = build_pipeline(device=str(device), hash_key_file=key_file).pipeline
        results["build_pipeline_with_device_s"] = time.perf_counter() - started
        started = time.perf_counter()
        without_device = build_pipeline(hash_key_file=key_file).pipeline
        results["build_pipeline_without_device_s"] = time.perf_counter() - started

        # What the mix yields, so the reader can see it exercises the detectors.
        for label, pipeline in (("with_device", with_device), ("without_device", without_device)):
            records = [pipeline.process(exchange) for exchange in exchanges]
            pii = [len(r.findings) for r, q in zip(records, requests, strict=True) if q.pii]
            clean = [len(r.findings) for r, q in zip(records, requests, strict=True) if not q.pii]
            results[f"findings_{label}"] = {
                "pii_requests_with_findings": sum(1 for n in pii if n) / len(pii),
                "mean_findings_per_pii_request": statistics.fmean(pii),
                "non_pii_requests_with_findings": sum(1 for n in clean if n) / len(clean),
                "analysis_errors": sum(1 for r in records if r.analysis_error),
            }

        timings: dict[str, Any] = {}
        for label, pipeline in (("with_device", with_device), ("without_device", without_device)):
            classify = _time_calls(pipeline.classifier.classify, exchanges, iterations)
            timings[f"classify_{label}"] = summarize_ns(classify)
            timings[f"classify_{label}"]["per_template_mean_us"] = _per_template(classify, requests)
            process = _time_calls(pipeline.process, exchanges, iterations)
            timings[f"process_{label}"] = summarize_ns(process)
        results["timings"] = timings
        results["classify_with_device_time_shares"] = profile_shares(
            with_device.classifier.classify, exchanges * 3)

        # Addon glue around Pipeline.process in the live proxy.
        flows = [mitm_flow_for(request, index) for index, request in enumerate(requests)]
        records = [with_device.process(exchange_from_flow(flow)) for flow in flows]
        glue_iterations = max(len(flows), iterations // 2)
        timings["exchange_from_flow"] = summarize_ns(
            _time_calls(exchange_from_flow, flows, glue_iterations))
        timings["record_summary"] = summarize_ns(_time_calls(
            lambda r: {**record_summary(r), "session": "x"}, records, glue_iterations))
        inspector = Inspector()
        pairs = list(zip(flows, records, strict=True))
        timings["inspector_keep"] = summarize_ns(_time_calls(
            lambda pair: inspector._keep(*pair), pairs, glue_iterations))
        # the live path: _keep left the record on the flow
        timings["flow_record"] = summarize_ns(_time_calls(flow_record, flows, glue_iterations))
        # a flow read from a file (or with its metadata replaced) has only the summary
        for flow, record in pairs:
            del flow._leakmap_record
            flow.metadata[METADATA_KEY] = {**record_summary(record), "session": "x"}
        timings["flow_record_rebuilt"] = summarize_ns(
            _time_calls(flow_record, flows, glue_iterations))
        timings["asyncio_to_thread"] = _to_thread_overhead(min(2000, glue_iterations))
        timings["addon_glue_per_flow_mean_us"] = (
            timings["exchange_from_flow"]["mean_us"] + timings["inspector_keep"]["mean_us"]
            + 2 * timings["flow_record"]["mean_us"] + timings["asyncio_to_thread"]["mean_us"]
        )

        # The store: what the writer thread spends per flow.
        engine = open_store(f"sqlite:///{Path(tmp) / 'micro.db'}")
        run_id = start_run(engine, "micro", "bench", "0")
        batch = [with_device.process(exchange) for exchange in
                 (exchange_for(request, index) for index, request in
                  enumerate(make_requests(500, seed=7)))]
        per_flow = []
        for number in range(db_batches):
            # fresh flow ids: a live proxy never rewrites a flow
            for index, record in enumerate(batch):
                record.exchange.flow_id = f"db-{number}-{index}"
            start = time.perf_counter_ns()
            write_records(engine, run_id, batch)
            per_flow.append((time.perf_counter_ns() - start) // len(batch))
        engine.dispose()
        timings["db_write_per_flow"] = {
            "batches": db_batches, "batch_size": len(batch),
            "mean_us": statistics.fmean(per_flow) / 1e3, "max_batch_mean_us": max(per_flow) / 1e3,
            "findings_per_flow": statistics.fmean(len(r.findings) for r in batch),
        }
    return results
