"""Headline live figures: ``leakmap run`` against bare ``mitmdump`` on 2 KB JSON bodies.

Each round starts both proxies in turn (the order alternates from round to
round), with the same flags, through ``run.proxy_session``: a warm-up, then
``rps_requests`` POSTs on 16 keep-alive connections, then ``p50_requests``
POSTs on one connection, one after another.  leakmap runs with the full
default policy, the generated 1,000-value device profile and SQLite in the
temporary folder; afterwards its ``flows`` rows are counted.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import payloads
import run

CONNECTIONS = 16


def _wires(authority: str, config: dict[str, Any]) -> tuple[dict[int, list[bytes]], list[bytes]]:
    loads = {CONNECTIONS: [r.wire(authority) for r in payloads.make_requests(config["rps_requests"])],
             1: [r.wire(authority) for r in payloads.make_requests(config["p50_requests"], seed=7)]}
    warm = [r.wire(authority) for r in payloads.make_requests(config["warmup"], seed=99)]
    return loads, warm


def _paired(sessions: list[dict[str, Any]], key: str, conns: str) -> list[dict[str, float]]:
    """Per round: bare and leakmap values of ``key`` at ``conns`` connections."""
    rounds: dict[int, dict[str, float]] = {}
    for session in sessions:
        value = session.get("loads", {}).get(conns, {}).get(key)
        if value is not None:
            rounds.setdefault(session["round"], {})[session["variant"]] = value
    return [pair for pair in rounds.values() if len(pair) == 2]


def summarize(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    summary = run.summarize_sessions(sessions, ["bare", "leakmap"])
    many, one = str(CONNECTIONS), "1"
    bare, leak = summary.get("bare", {}), summary.get("leakmap", {})
    rps = _paired(sessions, "rps", many)
    p50 = _paired(sessions, "p50_ms", one)
    return {
        "live_rps_ratio": leak[many]["rps"] / bare[many]["rps"],
        "live_added_p50_ms": leak[one]["p50_ms"] - bare[one]["p50_ms"],
        "rps_ratio_per_round": [round(p["leakmap"] / p["bare"], 3) for p in rps],
        "added_p50_ms_per_round": [round(p["leakmap"] - p["bare"], 3) for p in p50],
        "bare_rps": bare[many]["rps"], "leakmap_rps": leak[many]["rps"],
        "bare_p50_ms": bare[one]["p50_ms"], "leakmap_p50_ms": leak[one]["p50_ms"],
        "bare_cpu_us_per_req": bare[many].get("proxy_cpu_us_per_req"),
        "leakmap_cpu_us_per_req": leak[many].get("proxy_cpu_incl_db_catchup_us_per_req"),
        "failed_requests": sum(e["failed"] for v in (bare, leak) for e in v.values()
                               if isinstance(e, dict)),
        **run.db_check(sessions),
        "summary": summary,
    }


def measure(config: dict[str, Any], workdir: Path, env: dict[str, str],
            device: Path) -> dict[str, Any]:
    """Alternating bare/leakmap rounds; the ratios and every session's numbers."""
    server = run.Origin(workdir)
    loads, warm = _wires(f"localhost:{server.port}", config)
    sessions: list[dict[str, Any]] = []
    try:
        for round_no in range(config["rounds"]):
            order = ("bare", "leakmap") if round_no % 2 == 0 else ("leakmap", "bare")
            for variant in order:
                print(f"  live round {round_no + 1}/{config['rounds']}: {variant} ...", flush=True)
                sessions.append(run.proxy_session(variant, round_no, [CONNECTIONS, 1], server,
                                                  workdir, env, loads, warm, device))
    finally:
        origin = server.stop()
    result = summarize(sessions)
    result.update(origin=origin, sessions=sessions, workload={
        "connections": CONNECTIONS, "rps_requests": config["rps_requests"],
        "p50_requests": config["p50_requests"], "warmup": config["warmup"],
        "rounds": config["rounds"],
        "mean_body_bytes": statistics.fmean(len(r.body) for r in payloads.make_requests(100)),
        "with_pii_fraction": sum(r.pii for r in payloads.make_requests(100)) / 100})
    return result
