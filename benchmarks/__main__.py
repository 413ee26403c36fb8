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
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bigprofile  # noqa: E402
import live  # noqa: E402
import offline  # noqa: E402
import run  # noqa: E402

FULL: dict[str, Any] = {
    "rounds": 3, "rps_requests": 1200, "p50_requests": 400, "warmup": 100,
    "flows": 20_000, "text_bytes": 50_000_000, "classify_budget_s": 20.0, "corpus_big": True,
}
QUICK: dict[str, Any] = {
    "rounds": 1, "rps_requests": 300, "p50_requests": 150, "warmup": 50,
    "flows": 2_000, "text_bytes": 5_000_000, "classify_budget_s": 4.0, "corpus_big": False,
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
    corpus = results.get("corpus", {})
    line.update(
        rss_tool=corpus.get("tool"), corpus_big_body=results["config"]["corpus_big"],
        classify_mb_covered=round(results.get("speed", {}).get("classify_mb_covered", 0), 1),
        every_flow_logged=all(results.get(p, {}).get("every_flow_logged", False)
                              for p in ("live", "analyze")),
        commit=results["machine"].get("git_commit"), elapsed_s=round(results["elapsed_s"]),
    )
    return line


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


def measure_all(config: dict[str, Any], workdir: Path, env: dict[str, str],
                results: dict[str, Any]) -> None:
    device = bigprofile.write_profile(workdir / "device-1000.yaml")
    print("1. classifier and matcher speed (in process) ...", flush=True)
    results["speed"] = offline.classify_and_match(config["text_bytes"], device,
                                                  config["classify_budget_s"])
    print("2. live: leakmap run vs bare mitmdump ...", flush=True)
    results["live"] = live.measure(config, workdir, env, device)
    print(f"3. leakmap analyze vs bare FlowReader, {config['flows']:,} flows ...", flush=True)
    results["analyze"] = offline.analyze_ratio(config["flows"], device, workdir, env)
    print("4. peak RSS of leakmap analyze over the hostile corpus ...", flush=True)
    results["corpus"] = offline.corpus_peak_rss(device, workdir, env, config["corpus_big"])


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
    results: dict[str, Any] = {
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
        results["elapsed_s"] = time.perf_counter() - started
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
    print(json.dumps(line))
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
