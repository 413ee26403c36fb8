"""leakmap's headline benchmark: six figures against their targets, in one run.

    .venv/bin/python -m benchmarks            # full run, under 5 minutes on 2 cores
    .venv/bin/python -m benchmarks --quick    # smoke run, about a minute

The last line of output is one JSON object with ``live_rps_ratio``,
``live_added_p50_ms``, ``analyze_ratio``, ``classify_mb_s``, ``match_mb_s``
and ``peak_rss_mb`` (plus ``mode`` and more).  Every detail goes to
``--out`` (default benchmarks/results/headline.json).  The detailed
breakdown benchmark is still ``benchmarks/run.py``; see docs/benchmarks.md.
Everything runs on 127.0.0.1, in a temporary folder (``LEAKMAP_HOME`` too).
"""

from __future__ import annotations

import argparse
import datetime
import json
import operator
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bigprofile  # noqa: E402
import live  # noqa: E402
import offline  # noqa: E402
import payloads  # noqa: E402
import report_bench  # noqa: E402
import run  # noqa: E402

FULL: dict[str, Any] = {
    # 12 rounds, or fewer (not under 6) where they would take more than 150 s: a slow day
    # (2026-12-03: 239 s for 12) would otherwise take the whole run past its 5 minutes
    "rounds": 12, "live_budget_s": 150.0, "min_rounds": 6,
    "rps_requests": 800, "p50_requests": 300, "warmup": 100,
    "flows": 20_000, "analyze_budget_s": 100.0, "text_bytes": 50_000_000,
    "classify_budget_s": 12.0, "corpus_big": True, "corpus_files": ("har", "flow"),
    "report_flows": 10_000,
}
QUICK: dict[str, Any] = {
    "rounds": 1, "rps_requests": 300, "p50_requests": 150, "warmup": 50,
    "flows": 1_000, "analyze_budget_s": 15.0, "text_bytes": 5_000_000,
    "classify_budget_s": 3.0, "corpus_big": False, "corpus_files": ("flow",),
    "report_flows": 500,
}
# key -> (target, comparison the value must pass, unit)
TARGETS: dict[str, tuple[float, Callable[[float, float], bool], str]] = {
    "live_rps_ratio": (0.90, operator.ge, ""),
    "live_added_p50_ms": (1.0, operator.le, "ms"),
    "analyze_ratio": (0.80, operator.ge, ""),
    "classify_mb_s": (10.0, operator.ge, "MB/s"),
    "match_mb_s": (150.0, operator.ge, "MB/s"),
    "peak_rss_mb": (1024.0, operator.le, "MB"),
}


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: the six figures first, then what qualifies them."""
    parts = (results.get("live", {}), results.get("analyze", {}), results.get("speed", {}),
             results.get("corpus", {}))
    line: dict[str, Any] = {key: None for key in TARGETS}
    for part in parts:
        line.update({k: round(v, 3) for k, v in part.items() if k in TARGETS and v is not None})
    line["mode"] = results["mode"]
    if "error" in results:
        line["error"] = results["error"]
    line["targets_met"] = {key: passed(key, line[key]) for key in TARGETS}
    corpus, analyze = results.get("corpus", {}), results.get("analyze", {})
    if line["peak_rss_mb"] is not None and not corpus.get("complete"):
        line["targets_met"]["peak_rss_mb"] = False  # a broken run's peak proves nothing
    config, speed = results["config"], results.get("speed", {})
    line.update(
        live_every_flow_logged=results.get("live", {}).get("every_flow_logged"),
        live_rounds=results.get("live", {}).get("live_rounds"),
        report_html_open_s=_round(results.get("report", {}).get("report_html_open_s")),
        report_mb=_round(results.get("report", {}).get("report_mb")),
        live_rps_ratio_paired_median=_round(results.get("live", {}).get(
            "live_rps_ratio_paired_median"), 3),
        live_loop_cpu_ratio=_round(results.get("live", {}).get("live_loop_cpu_ratio"), 3),
        enforcing_rps_ratio=_round(results.get("live", {}).get("enforcing_rps_ratio")),
        enforcing_added_p50_ms=_round(results.get("live", {}).get("enforcing_added_p50_ms")),
        analyze_flows_timed=analyze.get("leakmap_flows_timed"),
        analyze_capped=analyze.get("analyze_capped"),
        classify_mb_covered=round(results.get("speed", {}).get("classify_mb_covered", 0), 1),
        # the machine's speed in the same minutes: json.loads beside each slice (offline.py)
        classify_json_loads_mb_s=_round(speed.get("classify_json_loads_mb_s"), 1),
        classify_per_json_loads=_round(speed.get("classify_per_json_loads"), 4),
        match_per_json_loads=_round(speed.get("match_per_json_loads"), 3),
        rss_tool=corpus.get("tool"), corpus_files=list(config["corpus_files"]),
        corpus_big_body=config["corpus_big"], corpus_flows_logged=corpus.get("flows"),
        corpus_exit_code=corpus.get("code"), corpus_complete=corpus.get("complete"),
        other_cpu_during_live=_round(results.get("live", {}).get("other_processes_cpu_util")),
        commit=results["machine"].get("git_commit"), commit_after=results.get("git_commit_after"),
        uncommitted_product_files=[f for f in results["machine"].get("git_modified_files", [])
                                   if not f.startswith(("benchmarks/", "docs/"))],
        elapsed_s=round(results["elapsed_s"]),
    )
    return line


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def passed(key: str, value: float | None) -> bool | None:
    if value is None:
        return None
    target, compare, _unit = TARGETS[key]
    return bool(compare(value, target))


def table(line: dict[str, Any]) -> str:
    rows = [("figure", "value", "target", "result")]
    for key, (target, compare, unit) in TARGETS.items():
        value, ok = line[key], line["targets_met"][key]
        sign = ">=" if compare is operator.ge else "<="
        rows.append((key, "-" if value is None else f"{value:,.3f} {unit}".strip(),
                     f"{sign} {target:g} {unit}".strip(),
                     "n/a" if ok is None else "pass" if ok else "FAIL"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     for row in rows)


def prepare(config: dict[str, Any], workdir: Path, env: dict[str, str],
            results: dict[str, Any]) -> dict[str, Any]:
    """Test data; meanwhile the peak-RSS run, which nothing timed may overlap.

    Peak memory does not depend on CPU contention, so ``leakmap analyze`` of
    the hostile corpus runs in the background while this process writes the
    flow file and the bodies.  It is waited for before any timing starts.
    """
    device = bigprofile.write_profile(workdir / "device-1000.yaml")
    print("0. test data; peak RSS of leakmap analyze over the hostile corpus meanwhile ...",
          flush=True)
    with ThreadPoolExecutor(1) as pool:
        corpus = pool.submit(offline.corpus_peak_rss, device, workdir, env, config["corpus_big"],
                             config["corpus_files"])
        data = {"device": device, "flow_file": workdir / "bench.flow",
                "bodies": payloads.make_bytes(config["text_bytes"])}
        results["flow_file"] = offline.write_flow_file(data["flow_file"], config["flows"])
        results["prepare_s"] = time.perf_counter() - results["started"]
        results["corpus"] = corpus.result()
    return data


def measure_all(config: dict[str, Any], workdir: Path, env: dict[str, str],
                results: dict[str, Any]) -> None:
    data = prepare(config, workdir, env, results)
    timings = results["part_s"] = {"prepare_and_corpus": time.perf_counter() - results["started"]}
    mark = time.perf_counter()
    print("1. classifier and matcher speed (in process) ...", flush=True)
    results["speed"] = offline.classify_and_match(data["bodies"], data["device"],
                                                  config["classify_budget_s"])
    del data["bodies"]
    timings["speed"], mark = time.perf_counter() - mark, time.perf_counter()
    print("2. live: leakmap run vs bare mitmdump ...", flush=True)
    results["live"] = live.measure(config, workdir, env, data["device"])
    timings["live"], mark = time.perf_counter() - mark, time.perf_counter()
    print(f"3. leakmap analyze vs bare FlowReader, {config['flows']:,} flows ...", flush=True)
    results["analyze"] = offline.analyze_ratio(data["flow_file"], config["flows"], data["device"],
                                               workdir, env, config["analyze_budget_s"])
    timings["analyze"], mark = time.perf_counter() - mark, time.perf_counter()
    print(f"4. HTML report of {config['report_flows']:,} flows, opened in headless Chromium ...",
          flush=True)
    results["report"] = report_bench.measure(config["report_flows"], data["device"], workdir, env)
    timings["report"] = time.perf_counter() - mark


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, about a minute")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "headline.json",
                        help="detailed JSON (default: benchmarks/results/headline.json)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    config = dict(QUICK if args.quick else FULL)
    workdir = Path(tempfile.mkdtemp(prefix="leakmap-headline-"))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["LEAKMAP_HOME"] = os.environ["LEAKMAP_HOME"] = str(workdir / "home")
    started = time.perf_counter()
    results: dict[str, Any] = {"started": started,
        "mode": "quick" if args.quick else "full", "config": config,
        "command": " ".join([".venv/bin/python", "-m", "benchmarks", *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": run.machine(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        measure_all(config, workdir, env, results)
    except Exception as e:  # still print what was measured, and the JSON line last
        traceback.print_exc()
        results["error"] = f"{type(e).__name__}: {e}"
    finally:
        results["elapsed_s"] = time.perf_counter() - results.pop("started")
        results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        results["git_commit_after"] = run.git_commit()
        results["headline"] = line = headline(results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmachine: {results['machine'].get('nproc')} CPUs, commit "
          f"{results['machine'].get('git_commit')}, mode {results['mode']}, "
          f"{results['elapsed_s']:.0f} s; details in {args.out}")
    print(table(line))
    if line["commit_after"] != line["commit"]:
        print(f"WARNING: HEAD moved from {line['commit']} to {line['commit_after']} during the "
              "run; the proxies and analyze runs import leakmap when they start")
    print(json.dumps(line))
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
