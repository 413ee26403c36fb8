"""Headline live figures: ``leakmap run`` against bare ``mitmdump`` on 2 KB JSON bodies.

Both proxies are started once, side by side, with the same flags
(``run.proxy_command``): leakmap with the full default policy, the generated
1,000-value device profile and SQLite in the temporary folder; and leakmap
with ``strict-defence.yaml``, whose block rules make every request wait for
its judgement before it leaves (the origin is not watched, so none is
blocked): the cost of enforcement.  Each gets a
warm-up.  Then, round after round, each proxy in turn (the order alternates)
gets ``rps_requests`` POSTs on 16 keep-alive connections and ``p50_requests``
POSTs on one connection, one after another.  Only one proxy carries traffic
at a time; the other sits idle, and after each of leakmap's loads the next
one waits until leakmap has logged every flow and its processes are idle
(after the warm-up, its analysis process may still be building its pipeline).
At the end leakmap's ``flows`` rows are counted against the requests it
answered.
"""

from __future__ import annotations

import signal
import sqlite3
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadgen
import payloads
import run

from servers import descendants, free_port, wait_for_port

CONNECTIONS = 16
VARIANTS = ("bare", "leakmap", "enforcing")  # enforcing: a policy with block rules


@dataclass
class Proxy:
    variant: str
    process: subprocess.Popen[bytes]
    port: int
    db_file: Path
    run_name: str
    startup_s: float = 0.0
    answered: int = 0
    loads: list[dict[str, Any]] = field(default_factory=list)


def start(variant: str, workdir: Path, env: dict[str, str], device: Path) -> Proxy:
    port = free_port()
    db_file, run_name = workdir / f"live-{variant}.db", f"bench-live-{variant}"
    command = run.proxy_command(variant, port, workdir / "mitmproxy-conf", db_file, run_name,
                                device)
    log = (workdir / f"live-{variant}.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return Proxy(variant, process, port, db_file, run_name, startup_s=time.perf_counter())


def ready(proxy: Proxy) -> None:
    """Wait until the proxy listens; its start-up time (from ``start``) is then known."""
    wait_for_port(proxy.port, proxy.process, timeout=120)
    proxy.startup_s = time.perf_counter() - proxy.startup_s


def stop(proxy: Proxy) -> int:
    if proxy.process.poll() is None:
        proxy.process.send_signal(signal.SIGTERM)
    try:
        return proxy.process.wait(60)
    except subprocess.TimeoutExpired:
        proxy.process.kill()
        return proxy.process.wait()


def one_load(proxy: Proxy, wires: list[bytes], conns: int, server: run.Origin, ca: str,
             round_no: int) -> None:
    sampler = run.Sampler(proxy.process.pid, server.process.pid)
    result = loadgen.run_load(wires, conns, server.port, ca, proxy.port)
    stats = run.load_stats(result, sampler.delta())
    stats["top_other_processes_cpu_s"] = sampler.top_others  # (CPU s, name) outside ours
    stats.update(round=round_no, conns=conns)
    proxy.answered += result.ok
    proxy.loads.append(stats)


def settle(proxy: Proxy) -> float:
    """Seconds until leakmap has logged every flow it answered and its processes are
    idle (the analysis process may still be building its pipeline after the warm-up):
    otherwise that work would run during the next load, the other proxy's included."""
    started = time.perf_counter()
    run.wait_for_rows(proxy.db_file, proxy.answered, timeout=60)
    while time.perf_counter() - started < 120:
        before = _tree_cpu_s(proxy.process.pid)
        time.sleep(IDLE_WINDOW_S)
        if _tree_cpu_s(proxy.process.pid) - before < IDLE_CORES * IDLE_WINDOW_S:
            break
    return time.perf_counter() - started


IDLE_WINDOW_S = 0.3
IDLE_CORES = 0.1  # a proxy with its heartbeat and writer waiting uses far less


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it."""
    total = 0.0
    for process in (pid, *descendants(pid)):
        try:
            total += run.proc_cpu_s(process)
        except OSError:  # ended meanwhile
            continue
    return total


def _median(proxy: Proxy, conns: int, key: str) -> float:
    return statistics.median(s[key] for s in proxy.loads if s["conns"] == conns and key in s)


def summarize(bare: Proxy, leak: Proxy) -> dict[str, Any]:
    many = CONNECTIONS
    per_round = [(b, m) for b in bare.loads for m in leak.loads
                 if (b["round"], b["conns"]) == (m["round"], m["conns"])]
    paired = [m["rps"] / b["rps"] for b, m in per_round if b["conns"] == many]
    return {
        "live_rps_ratio": _median(leak, many, "rps") / _median(bare, many, "rps"),
        # the same rounds paired: follows the machine's drift within a run (not the headline)
        "live_rps_ratio_paired_median": statistics.median(paired) if paired else None,
        # the event loop's CPU per request (main thread; /proc, 10 ms ticks), leakmap / bare
        "live_loop_cpu_ratio": (_median(leak, many, "proxy_main_thread_cpu_us_per_req")
                                / _median(bare, many, "proxy_main_thread_cpu_us_per_req")),
        "live_added_p50_ms": _median(leak, 1, "p50_ms") - _median(bare, 1, "p50_ms"),
        "rps_ratio_per_round": [round(m["rps"] / b["rps"], 3) for b, m in per_round
                                if b["conns"] == many],
        "added_p50_ms_per_round": [round(m["p50_ms"] - b["p50_ms"], 3) for b, m in per_round
                                   if b["conns"] == 1],
        **{f"{p.variant}_{key}": _median(p, conns, key) for p in (bare, leak)
           for key, conns in (("rps", many), ("p50_ms", 1), ("p99_ms", 1),
                              ("proxy_cpu_us_per_req", many))},
        "failed_requests": sum(s["failed"] for p in (bare, leak) for s in p.loads),
        # CPU of processes outside the benchmark per wall second (1.0 = one core)
        "other_processes_cpu_util": statistics.median(
            s.get("other_processes_cpu_util", 0.0) for p in (bare, leak) for s in p.loads),
        "startup_s": {p.variant: p.startup_s for p in (bare, leak)},
    }


def enforcing(bare: Proxy, judged: Proxy) -> dict[str, Any]:
    """The same two figures with every request judged before it leaves (block rules)."""
    many = CONNECTIONS
    return {
        "enforcing_rps_ratio": _median(judged, many, "rps") / _median(bare, many, "rps"),
        "enforcing_added_p50_ms": _median(judged, 1, "p50_ms") - _median(bare, 1, "p50_ms"),
        **{f"enforcing_{key}": _median(judged, conns, key)
           for key, conns in (("rps", many), ("p50_ms", 1), ("p99_ms", 1))},
        "enforcing_startup_s": judged.startup_s,
    }


def check_db(leak: Proxy) -> dict[str, Any]:
    """leakmap's ``flows`` rows and run status, once the proxy has stopped."""
    flows, findings = run.count_flows(leak.db_file)
    with sqlite3.connect(f"file:{leak.db_file}?mode=ro", uri=True) as connection:
        status = connection.execute("SELECT status FROM runs WHERE name = ?",
                                    (leak.run_name,)).fetchone()
    return {"flows": flows, "findings": findings, "expected_flows": leak.answered,
            "every_flow_logged": flows == leak.answered,
            "run_status": status[0] if status else None}


def _rounds(proxies: dict[str, Proxy], loads: dict[int, list[bytes]], server: run.Origin,
            ca: str, rounds: int, budget_s: float | None = None, min_rounds: int = 1) -> int:
    """Up to ``rounds`` rounds; after ``min_rounds``, none that would end past ``budget_s``
    (judged by the rounds so far).  How many ran."""
    started = time.perf_counter()
    for round_no in range(rounds):
        spent = time.perf_counter() - started
        if budget_s is not None and round_no >= min_rounds and (
                spent + spent / round_no > budget_s):
            print(f"  live: {round_no} rounds in {spent:.0f} s; one more would pass the "
                  f"{budget_s:.0f} s budget", flush=True)
            return round_no
        shift = round_no % len(VARIANTS)  # each variant takes each place in turn
        order = VARIANTS[shift:] + VARIANTS[:shift]
        for variant in order:
            print(f"  live round {round_no + 1}/{rounds}: {variant} ...", flush=True)
            for conns, wires in loads.items():
                one_load(proxies[variant], wires, conns, server, ca, round_no)
                if variant != "bare":
                    proxies[variant].loads[-1]["settled_s"] = round(settle(proxies[variant]), 3)
    return rounds


def measure(config: dict[str, Any], workdir: Path, env: dict[str, str],
            device: Path) -> dict[str, Any]:
    """Alternating bare/leakmap rounds; the ratios and every load's numbers."""
    server = run.Origin(workdir)
    authority = f"localhost:{server.port}"
    loads = {CONNECTIONS: [r.wire(authority) for r in payloads.make_requests(config["rps_requests"])],
             1: [r.wire(authority) for r in payloads.make_requests(config["p50_requests"], seed=7)]}
    warm = [r.wire(authority) for r in payloads.make_requests(config["warmup"], seed=99)]
    ca = str(workdir / "mitmproxy-conf" / "mitmproxy-ca-cert.pem")
    # bare first: it writes the CA into the shared confdir before leakmap reads it
    proxies = {"bare": start("bare", workdir, env, device)}
    try:
        ready(proxies["bare"])
        for variant in VARIANTS[1:]:
            proxies[variant] = start(variant, workdir, env, device)
            ready(proxies[variant])
        for proxy in proxies.values():
            proxy.answered += loadgen.run_load(warm, CONNECTIONS, server.port, ca, proxy.port).ok
        warm_settled_s = settle(proxies["leakmap"])  # the warm-up analysed, the process built
        settle(proxies["enforcing"])
        rounds_done = _rounds(proxies, loads, server, ca, config["rounds"],
                              config.get("live_budget_s"), config.get("min_rounds", 1))
        result = summarize(proxies["bare"], proxies["leakmap"])
        result["live_rounds"] = rounds_done
        result.update(enforcing(proxies["bare"], proxies["enforcing"]))
        result["warm_settled_s"] = warm_settled_s
    finally:
        codes = {variant: stop(proxy) for variant, proxy in proxies.items()}
        origin = server.stop()
    enforcing_db = check_db(proxies["enforcing"])
    result.update(check_db(proxies["leakmap"]), exit_codes=codes,
                  enforcing_every_flow_logged=enforcing_db["every_flow_logged"], origin=origin,
                  loads={v: p.loads for v, p in proxies.items()}, workload={
                      "connections": CONNECTIONS, "rps_requests": config["rps_requests"],
                      "p50_requests": config["p50_requests"], "warmup": config["warmup"],
                      "rounds": config["rounds"],
                      "mean_request_bytes": statistics.fmean(len(w) for w in loads[CONNECTIONS]),
                      "with_pii_fraction": sum(r.pii for r in payloads.make_requests(100)) / 100})
    return result
