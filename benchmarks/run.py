"""leakmap benchmark: overhead against bare mitmproxy, classification speed, offline analysis.

    .venv/bin/python benchmarks/run.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick    # smoke run, under a minute

1. proxy: the same HTTPS workload (``workload.py``) through bare ``mitmdump``
   and through ``leakmap run`` (sample device profile, SQLite in a temp dir),
   same flags otherwise, alternating over rounds; plus client -> origin with
   no proxy, to show the origin and the client are not the bottleneck.
   Requests/s, latency percentiles, proxy CPU per request, leakmap/bare ratios,
   and a count of the rows leakmap wrote to ``flows``.
1b. breakdown: ``mitmdump -s`` with leakmap's addons added one at a time
   (``ablation/leakmap_subset.py``) plus an event-loop lag and GC probe
   (``ablation/looplag.py``), and two what-ifs (classification on the event
   loop; the Inspector's ``gc.freeze()`` undone), to show where the overhead
   comes from.
2. micro: ``Classifier.classify`` / ``Pipeline.process`` per flow, with and
   without the device profile, and the addon and store work around them.
3. analyze: ``leakmap analyze`` over a generated HAR; wall time and peak RSS.

Everything listens on and talks to 127.0.0.1 only.  Results are printed as
tables and written as JSON (``--out``, default benchmarks/results/latest.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import har_bench  # noqa: E402

sys.path.insert(0, str(HERE.parent / "tests"))
import loadgen  # noqa: E402
import micro  # noqa: E402
import workload  # noqa: E402

from servers import free_port, self_signed, wait_for_port  # noqa: E402

BIN = Path(sys.executable).parent
DEVICE = REPO / "samples" / "redmi-1s.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")

FULL: dict[str, Any] = {
    "requests": 2000, "concurrency": [1, 8], "rounds": 3, "warmup": 200, "breakdown_rounds": 2,
    "har_entries": 20000, "micro_iterations": 20000, "db_batches": 8,
}
QUICK: dict[str, Any] = {
    "requests": 300, "concurrency": [1, 8], "rounds": 1, "warmup": 50, "breakdown_rounds": 1,
    "har_entries": 2000, "micro_iterations": 2000, "db_batches": 2,
}


# --------------------------------------------------------------------------
# Small helpers.


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(ordered: list[int], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6  # ns -> ms


def latency_summary(latencies_ns: list[int]) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    return {"p50_ms": percentile(ordered, 0.50), "p95_ms": percentile(ordered, 0.95),
            "p99_ms": percentile(ordered, 0.99), "max_ms": ordered[-1] / 1e6,
            "mean_ms": statistics.fmean(ordered) / 1e6}


def count_flows(db_file: Path) -> tuple[int, int]:
    with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=10) as connection:
        flows, findings = connection.execute(
            "SELECT count(*), coalesce(sum(finding_count), 0) FROM flows").fetchone()
    return int(flows), int(findings)


def wait_for_rows(db_file: Path, expected: int, timeout: float = 30) -> tuple[float, int]:
    """Seconds until ``flows`` holds ``expected`` rows (the writer's lag), and the count."""
    started = time.perf_counter()
    flows = 0
    while time.perf_counter() - started < timeout:
        try:
            flows, _ = count_flows(db_file)
        except sqlite3.OperationalError:
            flows = 0
        if flows >= expected:
            break
        time.sleep(0.02)
    return time.perf_counter() - started, flows


def git_commit() -> str:
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, timeout=10).stdout.strip()


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_mb"] = int(line.split()[1]) // 1024
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        info["mitmproxy"] = version("mitmproxy")
        info["leakmap"] = version("leakmap")
    except Exception:
        pass
    try:
        info["git_commit"] = git_commit()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10).stdout.split("\n")
        info["git_modified_files"] = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# --------------------------------------------------------------------------
# 1. Proxy throughput and latency.


class Origin:
    """The origin server subprocess (benchmarks/origin.py)."""

    def __init__(self, workdir: Path) -> None:
        self.cert, key = self_signed(workdir)  # the tests' throwaway certificate
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "origin.py"), str(self.cert), str(key)],
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


STRICT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "strict-defence.yaml"


def proxy_command(variant: str, port: int, confdir: Path, db_file: Path,
                  run_name: str, device: Path = DEVICE) -> list[str]:
    """``bare``: mitmdump alone; ``leakmap``: ``leakmap run``; same proxy flags for both."""
    common = ["--listen-port", str(port), "--set", f"confdir={confdir}",
              "--set", "ssl_insecure=true", "--set", "termlog_verbosity=error",
              "--set", "flow_detail=0"]
    if variant == "bare":
        return [str(BIN / "mitmdump"), *common]
    if variant in ("leakmap", "enforcing"):
        # enforcing: a policy with block rules, so every request is judged before it leaves
        # (the origin is not watched: nothing is blocked, all of it is forwarded)
        policy = ["--policy", str(STRICT_POLICY)] if variant == "enforcing" else []
        return [str(BIN / "leakmap"), "run", "--device", str(device), "--db",
                f"sqlite:///{db_file}", "--run-name", run_name, *policy, *common]
    # breakdown variants: mitmdump with the loop-lag probe and a subset of leakmap's addons
    addons = BREAKDOWN[variant]
    command = [str(BIN / "mitmdump"), "-s", str(HERE / "ablation" / "looplag.py")]
    if addons:
        command += ["-s", str(HERE / "ablation" / "leakmap_subset.py"),
                    "--set", f"leakmap_device={DEVICE}"]
    if "recorder" in addons:
        command += ["--set", f"leakmap_db=sqlite:///{db_file}", "--set",
                    f"leakmap_run_name={run_name}"]
    return [*command, *common]


# name -> (leakmap addons loaded, Review's warning lines silenced, variant it adds to,
#          the Inspector's gc.freeze() undone once running)
BREAKDOWN_VARIANTS: dict[str, tuple[str, bool, str | None, bool]] = {
    "B0 mitmdump + lag probe": ("", False, None, False),
    "B1 + Inspector": ("inspector", False, "B0 mitmdump + lag probe", False),
    "B1' Inspector inline (what-if)": ("inspector_inline", False, "B1 + Inspector", False),
    "B2 + Review": ("inspector,review", False, "B1 + Inspector", False),
    "B3 + Recorder, Review quiet": ("inspector,review,recorder", True, "B2 + Review", False),
    "B4 all three (= addon-path)": ("inspector,review,recorder", False,
                                    "B3 + Recorder, Review quiet", False),
    "B4' without gc.freeze() (what-if)": ("inspector,review,recorder", False,
                                          "B4 all three (= addon-path)", True),
}
BREAKDOWN = {name: [a for a in spec[0].split(",") if a]
             for name, spec in BREAKDOWN_VARIANTS.items()}


def system_cpu_s() -> dict[str, float]:
    """Machine-wide CPU seconds (all cores) from /proc/stat: process time, interrupts, steal."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"system": (user + nice + system) / CLK_TCK,
            "irq_softirq": (irq + softirq) / CLK_TCK, "steal": steal / CLK_TCK}


def thread_cpu_s(pid: int) -> float:
    """CPU seconds of a process's main thread (its event loop, for mitmproxy)."""
    text = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def load_stats(result: loadgen.LoadResult, cpu: dict[str, float]) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "requests": result.sent, "ok": result.ok, "failed": result.failed,
        "errors": result.errors[:5], "wall_s": result.wall_s,
        "rps": result.ok / result.wall_s if result.wall_s else 0.0,
    }
    if result.latencies_ns:
        stats.update(latency_summary(result.latencies_ns))
    for name, seconds in cpu.items():
        stats[f"{name}_cpu_s"] = seconds
        stats[f"{name}_cpu_us_per_req"] = seconds / max(1, result.ok) * 1e6
        stats[f"{name}_cpu_util"] = seconds / result.wall_s if result.wall_s else 0.0
    return stats


def all_processes_cpu_s() -> dict[int, tuple[str, float]]:
    """CPU seconds and name of every process on the machine (from /proc)."""
    result = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        name = args.strip()[:80] or text[text.find("(") + 1 : text.rfind(")")]
        result[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return result


class Sampler:
    """CPU counters of the proxy, the origin, this client and the machine, around one load."""

    def __init__(self, proxy_pid: int | None, origin_pid: int) -> None:
        self.proxy_pid, self.origin_pid = proxy_pid, origin_pid
        self.ours = {os.getpid(), origin_pid, *([proxy_pid] if proxy_pid else [])}
        self.start = self._read()
        self.processes = all_processes_cpu_s()

    def _read(self) -> dict[str, float]:
        values = {"origin": proc_cpu_s(self.origin_pid), "client": self_cpu_s(),
                  **system_cpu_s()}
        if self.proxy_pid is not None:
            values["proxy"] = proc_cpu_s(self.proxy_pid)
            values["proxy_main_thread"] = thread_cpu_s(self.proxy_pid)
        return values

    def delta(self) -> dict[str, Any]:
        end = self._read()
        cpu: dict[str, Any] = {name: end[name] - self.start[name] for name in end}
        ours = cpu["origin"] + cpu["client"] + cpu.get("proxy", 0.0)
        # whatever else ran on the machine meanwhile (other users, other tests)
        cpu["other_processes"] = max(0.0, cpu.pop("system") - ours)
        if "proxy" in cpu:
            cpu["proxy_other_threads"] = max(0.0, cpu["proxy"] - cpu["proxy_main_thread"])
        others = []
        for pid, (name, seconds) in all_processes_cpu_s().items():
            before = self.processes.get(pid, (name, 0.0))[1]
            if pid not in self.ours and seconds - before >= 0.05:
                others.append((round(seconds - before, 2), name))
        self.top_others = sorted(others, reverse=True)[:3]
        return cpu


def lag_stats(probe: dict[str, list[list[float]]], start: float, end: float) -> dict[str, float]:
    """Event-loop lateness and garbage-collection pauses inside one load's window."""
    lags = sorted(lag for when, lag in probe["lag"] if start <= when <= end)
    if not lags:
        return {}
    collections = [(seconds, generation) for when, seconds, generation in probe["gc"]
                   if start <= when <= end]
    full = [seconds for seconds, generation in collections if generation == 2]
    return {"loop_lag_p50_ms": lags[len(lags) // 2] * 1e3,
            "loop_lag_p99_ms": lags[min(len(lags) - 1, int(0.99 * len(lags)))] * 1e3,
            "loop_lag_max_ms": lags[-1] * 1e3,
            "loop_late_over_5ms_share": sum(1 for lag in lags if lag > 0.005) / len(lags),
            "gc_collections": len(collections),
            "gc_total_ms": sum(seconds for seconds, _ in collections) * 1e3,
            "gc_ms_per_s": sum(seconds for seconds, _ in collections) * 1e3 / (end - start),
            "gc_gen2_collections": len(full),
            "gc_gen2_max_ms": max(full, default=0.0) * 1e3}


def proxy_session(variant: str, round_no: int, concurrencies: list[int], server: Origin,
                  workdir: Path, env: dict[str, str], wires: list[bytes],
                  warm: list[bytes]) -> dict[str, Any]:
    port = free_port()
    confdir = workdir / "mitmproxy-conf"
    slug = "".join(ch if ch.isalnum() else "-" for ch in variant)
    db_file = workdir / f"{slug}-{round_no}.db"
    run_name = f"bench-{slug}-{round_no}"
    command = proxy_command(variant, port, confdir, db_file, run_name)
    records = variant == "leakmap" or "recorder" in BREAKDOWN.get(variant, [])
    session_env = dict(env)
    lag_file = workdir / f"{slug}-{round_no}.lag.json"
    if variant in BREAKDOWN:
        session_env["LEAKMAP_BENCH_ADDONS"] = BREAKDOWN_VARIANTS[variant][0]
        session_env["LEAKMAP_BENCH_QUIET"] = "1" if BREAKDOWN_VARIANTS[variant][1] else "0"
        session_env["LEAKMAP_BENCH_LAGFILE"] = str(lag_file)
        session_env["LEAKMAP_BENCH_GC_UNFREEZE"] = "1" if BREAKDOWN_VARIANTS[variant][3] else "0"
    log_path = workdir / f"{slug}-{round_no}.log"
    session: dict[str, Any] = {"variant": variant, "round": round_no, "command": command}
    windows: dict[str, tuple[float, float]] = {}
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=session_env)
        try:
            wait_for_port(port, process)
            session["startup_s"] = time.perf_counter() - started
            ca = str(confdir / "mitmproxy-ca-cert.pem")
            warmup = loadgen.run_load(warm, max(concurrencies), server.port, ca, port)
            expected = warmup.ok
            if records:
                wait_for_rows(db_file, expected)
            session["loads"] = {}
            for concurrency in concurrencies:
                sampler = Sampler(process.pid, server.process.pid)
                window_start = time.monotonic()
                result = loadgen.run_load(wires, concurrency, server.port, ca, port)
                windows[str(concurrency)] = (window_start, time.monotonic())
                cpu_start = sampler.start["proxy"]
                stats = load_stats(result, sampler.delta())
                stats["top_other_processes_cpu_s"] = sampler.top_others
                expected += result.ok
                if records:
                    lag, rows = wait_for_rows(db_file, expected)
                    stats["db_rows_after_load"] = rows
                    stats["db_lag_s"] = lag
                    # what the writer thread spent catching up belongs to these requests
                    stats["proxy_cpu_incl_db_catchup_us_per_req"] = (
                        (proc_cpu_s(process.pid) - cpu_start) / max(1, result.ok) * 1e6)
                else:
                    stats["proxy_cpu_incl_db_catchup_us_per_req"] = stats["proxy_cpu_us_per_req"]
                session["loads"][str(concurrency)] = stats
            session["requests_ok"] = expected
        finally:
            stopped = time.perf_counter()
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                session["exit_code"] = process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                session["exit_code"] = process.wait()
            session["shutdown_s"] = time.perf_counter() - stopped
    if session.get("exit_code"):
        session["log_tail"] = log_path.read_text(errors="replace")[-2000:]
    if lag_file.exists():
        probe = json.loads(lag_file.read_text())
        session["gc_frozen_objects"] = probe.get("frozen")
        for label, (start, end) in windows.items():
            load = session["loads"][label]
            load.update(lag_stats(probe, start, end))
            if "gc_total_ms" in load:
                load["gc_us_per_req"] = load["gc_total_ms"] * 1e3 / max(1, load["ok"])
    if records and db_file.exists():
        flows, findings = count_flows(db_file)
        with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as connection:
            status = connection.execute("SELECT status FROM runs WHERE name = ?",
                                        (run_name,)).fetchone()
        session["db"] = {"flows": flows, "findings": findings, "expected_flows": expected,
                         "every_flow_logged": flows == expected,
                         "run_status": status[0] if status else None,
                         "file_mb": db_file.stat().st_size / 2**20}
    return session


DIRECT_REPEAT = 5  # the origin is fast: a longer direct load measures its CPU better


def direct_session(concurrencies: list[int], server: Origin,
                   wires: list[bytes]) -> dict[str, Any]:
    loads = {}
    for concurrency in concurrencies:
        sampler = Sampler(None, server.process.pid)
        result = loadgen.run_load(wires * DIRECT_REPEAT, concurrency, server.port,
                                  str(server.cert))
        loads[str(concurrency)] = load_stats(result, sampler.delta())
        loads[str(concurrency)]["top_other_processes_cpu_s"] = sampler.top_others
    return {"variant": "direct", "loads": loads}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


SUMMARY_KEYS = ("rps", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms",
                "proxy_cpu_us_per_req", "proxy_cpu_incl_db_catchup_us_per_req",
                "proxy_main_thread_cpu_us_per_req", "proxy_other_threads_cpu_us_per_req",
                "proxy_cpu_util", "origin_cpu_util", "client_cpu_util",
                "other_processes_cpu_util", "steal_cpu_util", "irq_softirq_cpu_util",
                "db_lag_s", "loop_lag_p50_ms", "loop_lag_p99_ms",
                "loop_lag_max_ms", "loop_late_over_5ms_share", "gc_collections", "gc_ms_per_s",
                "gc_us_per_req",
                "gc_gen2_collections", "gc_gen2_max_ms")
RATIO_KEYS = ("rps", "p50_ms", "p95_ms", "p99_ms", "proxy_cpu_us_per_req",
              "proxy_cpu_incl_db_catchup_us_per_req", "proxy_main_thread_cpu_us_per_req")


def summarize_sessions(sessions: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Per variant and connection count: the median over rounds of each measure."""
    summary: dict[str, Any] = {}
    for variant in variants:
        mine = [s for s in sessions if s["variant"] == variant and "loads" in s]
        concurrencies = sorted({c for s in mine for c in s["loads"]}, key=int)
        for concurrency in concurrencies:
            loads = [s["loads"][concurrency] for s in mine if concurrency in s["loads"]]
            entry: dict[str, Any] = {"rounds": len(loads)}
            for key in SUMMARY_KEYS:
                values = [load[key] for load in loads if key in load]
                if values:
                    entry[key] = _median(values)
            entry["rps_all_rounds"] = [round(load["rps"], 1) for load in loads]
            entry["failed"] = sum(load["failed"] for load in loads)
            summary.setdefault(variant, {})[concurrency] = entry
        startups = [s["startup_s"] for s in mine if "startup_s" in s]
        if startups:
            summary.setdefault(variant, {})["startup_s"] = _median(startups)
        frozen = [s["gc_frozen_objects"] for s in mine if s.get("gc_frozen_objects") is not None]
        if frozen:
            summary.setdefault(variant, {})["gc_frozen_objects"] = _median(frozen)
    return summary


def ratios(summary: dict[str, Any], over: str, under: str) -> dict[str, Any]:
    result = {}
    for concurrency, top in summary.get(over, {}).items():
        bottom = summary.get(under, {}).get(concurrency)
        if isinstance(top, dict) and isinstance(bottom, dict):
            result[concurrency] = {key: top[key] / bottom[key] for key in RATIO_KEYS
                                   if bottom.get(key) and key in top}
    return result


def db_check(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    checked = [s for s in sessions if "db" in s]
    return {"sessions": [{"variant": s["variant"], "round": s["round"], **s["db"]}
                         for s in checked],
            "every_flow_logged": bool(checked) and all(s["db"]["every_flow_logged"]
                                                       for s in checked)}


def run_proxy(config: dict[str, Any], workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    server = Origin(workdir)
    authority = f"localhost:{server.port}"
    wires = [r.wire(authority) for r in workload.make_requests(config["requests"])]
    warm = [r.wire(authority) for r in workload.make_requests(config["warmup"], seed=99)]
    sessions: list[dict[str, Any]] = []
    breakdown: list[dict[str, Any]] = []
    breakdown_concurrency = config["concurrency"]
    try:
        for round_no in range(config["rounds"]):
            sessions.append(direct_session(config["concurrency"], server, wires))
            # alternate the order so neither variant always runs on a warmer machine
            order = ("bare", "leakmap") if round_no % 2 == 0 else ("leakmap", "bare")
            for variant in order:
                print(f"  round {round_no + 1}/{config['rounds']}: {variant} ...", flush=True)
                sessions.append(proxy_session(variant, round_no, config["concurrency"], server,
                                              workdir, env, wires, warm))
        for round_no in range(config["breakdown_rounds"]):
            names = list(BREAKDOWN_VARIANTS)
            for variant in names if round_no % 2 == 0 else reversed(names):
                print(f"  breakdown round {round_no + 1}/{config['breakdown_rounds']}: "
                      f"{variant} ...", flush=True)
                breakdown.append(proxy_session(variant, round_no, breakdown_concurrency,
                                               server, workdir, env, wires, warm))
    finally:
        origin_stats = server.stop()
    answered = sum(load["ok"] for s in sessions + breakdown for load in s.get("loads", {}).values())
    answered += len(warm) * sum(1 for s in sessions + breakdown if s["variant"] != "direct")
    background: dict[str, float] = {}
    for session in sessions + breakdown:
        for load in session.get("loads", {}).values():
            for seconds, name in load.get("top_other_processes_cpu_s", []):
                background[name] = background.get(name, 0.0) + seconds
    summary = summarize_sessions(sessions, ["direct", "bare", "leakmap"])
    summary["ratios_leakmap_over_bare"] = ratios(summary, "leakmap", "bare")
    summary.update(db_check(sessions))
    breakdown_summary = summarize_sessions(breakdown, list(BREAKDOWN_VARIANTS))
    for name, (_addons, _quiet, base, _unfreeze) in BREAKDOWN_VARIANTS.items():
        for concurrency, entry in breakdown_summary.get(name, {}).items():
            below = breakdown_summary.get(base or "", {}).get(concurrency)
            key = "proxy_cpu_incl_db_catchup_us_per_req"
            if isinstance(entry, dict) and isinstance(below, dict) and key in entry:
                entry["base"] = base
                entry["cpu_us_per_req_vs_base"] = entry[key] - below[key]
    breakdown_summary.update(db_check(breakdown))
    return {
        "workload": {
            "requests_per_load": config["requests"], "concurrency": config["concurrency"],
            "rounds": config["rounds"], "warmup_requests": config["warmup"],
            "direct_requests_per_load": config["requests"] * DIRECT_REPEAT,
            "with_pii_fraction": sum(r.pii for r in workload.make_requests(100)) / 100,
            "mean_request_bytes": statistics.fmean(len(w) for w in wires),
            "breakdown_rounds": config["breakdown_rounds"],
            "breakdown_concurrency": breakdown_concurrency,
        },
        "sessions": sessions,
        "breakdown_sessions": breakdown,
        "origin": {**origin_stats, "ok_responses_seen_by_client": answered},
        "background_cpu_s_by_process": dict(sorted(background.items(), key=lambda kv: -kv[1])[:5]),
        "summary": summary,
        "breakdown": breakdown_summary,
    }


# --------------------------------------------------------------------------
# Printing.


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                     enumerate(zip(cells, widths, strict=True)))


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"\n{title}", _row(header, widths), _row(["-" * w for w in widths], widths)]
    lines += [_row([str(c) for c in row], widths) for row in rows]
    return "\n".join(lines)


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.{digits}f}"


def _proxy_rows(summary: dict[str, Any], variants: list[str]) -> list[list[str]]:
    rows = []
    for variant in variants:
        for concurrency, e in summary.get(variant, {}).items():
            if not isinstance(e, dict):
                continue
            rows.append([variant, concurrency, _f(e["rps"], 0), _f(e["p50_ms"], 2),
                         _f(e["p95_ms"], 2), _f(e["p99_ms"], 2), _f(e["max_ms"], 1),
                         _f(e.get("proxy_cpu_us_per_req"), 0),
                         _f(e.get("proxy_main_thread_cpu_us_per_req"), 0),
                         _f(e.get("proxy_cpu_incl_db_catchup_us_per_req"), 0),
                         _f(e.get("proxy_cpu_util"), 2), _f(e.get("origin_cpu_util"), 2),
                         _f(e.get("client_cpu_util"), 2),
                         _f(e.get("other_processes_cpu_util"), 2), str(e["failed"])])
    return rows


PROXY_HEADER = ["path", "conns", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
                "proxy CPU µs/req",
                "of it main thread", "+DB catch-up", "proxy util", "origin util",
                "client util", "other procs", "failed"]


def _db_rows(check: dict[str, Any]) -> list[list[str]]:
    return [[d["variant"], str(d["round"]), str(d["flows"]), str(d["expected_flows"]),
             str(d["findings"]), str(d["run_status"]), "yes" if d["every_flow_logged"] else "NO"]
            for d in check["sessions"]]


def report(results: dict[str, Any]) -> str:
    out = []
    m = results["machine"]
    out.append(f"machine: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), Python {m['python']}, "
               f"mitmproxy {m.get('mitmproxy')}, leakmap {m.get('leakmap')} @ "
               f"{m.get('git_commit')}; mode: {results['mode']}; load average before/after: "
               f"{results.get('loadavg_before')} / {results.get('loadavg_after')}")
    proxy = results.get("proxy")
    if proxy:
        s, w = proxy["summary"], proxy["workload"]
        out.append(table(
            f"1. Proxy: {w['requests_per_load']} HTTPS POSTs per load ({w['with_pii_fraction']:.0%} "
            f"with PII, {w['mean_request_bytes']:.0f} B), keep-alive, median of {w['rounds']} "
            f"round(s); direct = client -> origin, no proxy ({w['direct_requests_per_load']} "
            f"requests)", PROXY_HEADER, _proxy_rows(s, ["direct", "bare", "leakmap"])))
        ratio_rows = [[c, _f(r.get("rps"), 2), _f(r.get("p50_ms"), 2), _f(r.get("p95_ms"), 2),
                       _f(r.get("p99_ms"), 2), _f(r.get("proxy_cpu_us_per_req"), 2),
                       _f(r.get("proxy_cpu_incl_db_catchup_us_per_req"), 2)]
                      for c, r in s["ratios_leakmap_over_bare"].items()]
        out.append(table("   leakmap run / bare mitmdump", ["conns", "req/s", "p50", "p95", "p99",
                         "CPU/req", "CPU/req incl. DB catch-up"], ratio_rows))
        out.append(table("   leakmap database after each run",
                         ["proxy", "round", "flows rows", "requests sent", "findings",
                          "run status", "all logged"], _db_rows(s)))
        startup = [[v, _f(s.get(v, {}).get("startup_s"), 2)] for v in ("bare", "leakmap")]
        out.append(table("   start-up (process start to port open)", ["proxy", "seconds"],
                         startup))
        o = proxy["origin"]
        out.append(f"   the origin answered {o['requests']} requests; the client saw "
                   f"{o['ok_responses_seen_by_client']} OK responses")
        busy = proxy.get("background_cpu_s_by_process") or {}
        if busy:
            out.append("   other processes busy during the loads (CPU s): " + "; ".join(
                f"{name} {seconds:.1f}" for name, seconds in list(busy.items())[:3]))
        b = proxy.get("breakdown", {})
        names = [n for n in BREAKDOWN_VARIANTS if n in b]
        if names:
            rows = []
            for concurrency in map(str, w["breakdown_concurrency"]):
                for name in names:
                    e = b[name].get(concurrency)
                    if not isinstance(e, dict):
                        continue
                    cpu = e.get("proxy_cpu_incl_db_catchup_us_per_req")
                    base = b.get(BREAKDOWN_VARIANTS[name][2] or "", {}).get(concurrency) or {}
                    before = base.get("proxy_cpu_incl_db_catchup_us_per_req")
                    step = cpu - before if before is not None and cpu is not None else None
                    rows.append([name, concurrency, _f(e["rps"], 0), _f(e["p99_ms"], 2),
                                 _f(e["max_ms"], 1), _f(cpu, 0), _f(step, 0),
                                 _f(e.get("proxy_main_thread_cpu_us_per_req"), 0),
                                 _f(e.get("proxy_other_threads_cpu_us_per_req"), 0),
                                 _f(e.get("loop_lag_p99_ms"), 2), _f(e.get("loop_lag_max_ms"), 1),
                                 _f(e.get("loop_late_over_5ms_share", 0) * 100, 1),
                                 _f(e.get("gc_us_per_req"), 0),
                                 _f(e.get("gc_gen2_collections"), 1),
                                 _f(e.get("gc_gen2_max_ms"), 1),
                                 _f(e.get("other_processes_cpu_util"), 2)])
            out.append(table(
                f"1b. Where the overhead comes from: mitmdump -s with leakmap's addons one by "
                f"one (median of {w['breakdown_rounds']} round(s))",
                ["variant", "conns", "req/s", "p99 ms", "max ms", "CPU µs/req", "vs base",
                 "main thread", "other threads", "loop lag p99 ms", "lag max ms",
                 "% ticks >5ms late", "GC µs/req", "gen2 GCs", "gen2 max ms", "other procs"],
                rows))
            out.append("   objects frozen (gc.get_freeze_count() at shutdown): " + "; ".join(
                f"{name.split(' ')[0]} {_f(b[name].get('gc_frozen_objects'), 0)}"
                for name in names))
    mic = results.get("micro")
    if mic:
        t = mic["timings"]
        rows = [[name, _f(t[name]["mean_us"]), _f(t[name]["p50_us"]), _f(t[name]["p95_us"]),
                 _f(t[name]["p99_us"])]
                for name in ("classify_with_device", "process_with_device",
                             "classify_without_device", "process_without_device",
                             "exchange_from_flow", "inspector_keep", "flow_record",
                             "flow_record_rebuilt", "asyncio_to_thread") if name in t]
        out.append(table(f"2. Per-flow timings, {mic['iterations']} calls over "
                         f"{mic['distinct_requests']} distinct requests (µs)",
                         ["step", "mean", "p50", "p95", "p99"], rows))
        db = t["db_write_per_flow"]
        out.append(f"   addon glue per live flow (exchange_from_flow + Inspector._keep + "
                   f"2 x cached flow_record + to_thread): "
                   f"{_f(t['addon_glue_per_flow_mean_us'])} µs")
        out.append(f"   SQLite write_records, batches of {db['batch_size']}: "
                   f"{_f(db['mean_us'])} µs per flow ({_f(db['findings_per_flow'], 2)} "
                   f"findings/flow)")
        per = t["classify_with_device"]["per_template_mean_us"]
        out.append("   classify (with device) by request kind, mean µs: " + ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])))
        shares = mic.get("classify_with_device_time_shares", {})
        if shares:
            out.append("   share of classify time (cProfile, steps overlap: _known_hits includes "
                       "_known_phone_numbers and search): " + ", ".join(
                           f"{k} {v:.0%}" for k, v in shares.items()))
        fw, fo = mic["findings_with_device"], mic["findings_without_device"]
        out.append(f"   PII requests with a finding: {fw['pii_requests_with_findings']:.0%} "
                   f"with device, {fo['pii_requests_with_findings']:.0%} without; "
                   f"non-PII requests with a finding: {fw['non_pii_requests_with_findings']:.0%}")
    har = results.get("analyze")
    if har:
        rows = []
        for label in ("one_entry", "large"):
            h = har[label]
            rows.append([f"{h['entries']:,}", _f(h["har_bytes"] / 2**20, 1), _f(h["wall_s"], 2),
                         _f(h["user_s"], 2), _f(h["sys_s"], 2), _f(h["max_rss_kb"] / 1024, 0),
                         str(h.get("flows")), str(h.get("findings")), str(h["code"])])
        out.append(table(f"3. leakmap analyze on a generated HAR ({har['large']['tool']})",
                         ["entries", "HAR MB", "wall s", "user s", "sys s", "peak RSS MB",
                          "flows rows", "findings", "exit"], rows))
        out.append(f"   {_f(har['entries_per_s'], 0)} entries/s overall, "
                   f"{_f(har['per_entry_ms'], 3)} ms per entry after start-up, "
                   f"RSS growth {_f(har['rss_growth_mb'], 0)} MB over the one-entry run")
    after = results.get("git_commit_after")
    if after and after != m.get("git_commit"):
        out.append(f"\nWARNING: HEAD moved from {m.get('git_commit')} to {after} during the run; "
                   f"later parts may have run newer code")
    out.append(f"\ntotal benchmark time: {results['elapsed_s']:.0f} s")
    return "\n".join(out)


# --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, under a minute")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "latest.json",
                        help="JSON results file (default: benchmarks/results/latest.json)")
    parser.add_argument("--only", choices=("proxy", "micro", "analyze"), action="append",
                        help="run only this part (repeatable)")
    parser.add_argument("--requests", type=int, help="requests per load")
    parser.add_argument("--concurrency", type=int, nargs="+", help="connection counts")
    parser.add_argument("--rounds", type=int, help="bare/leakmap rounds")
    parser.add_argument("--breakdown-rounds", type=int, help="breakdown rounds (0: skip it)")
    parser.add_argument("--har-entries", type=int, help="entries in the generated HAR")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    config = dict(QUICK if args.quick else FULL)
    for key in ("requests", "concurrency", "rounds", "breakdown_rounds", "har_entries"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    parts = args.only or ["micro", "proxy", "analyze"]

    workdir = Path(tempfile.mkdtemp(prefix="leakmap-bench-"))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["LEAKMAP_HOME"] = str(workdir / "home")
    os.environ["LEAKMAP_HOME"] = env["LEAKMAP_HOME"]  # keys of the in-process micro benchmark
    started = time.perf_counter()
    results: dict[str, Any] = {
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "mode": "quick" if args.quick else "full",
        "command": " ".join([".venv/bin/python", "benchmarks/run.py", *sys.argv[1:]]),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": config,
        "machine": machine(),
    }
    try:
        if "micro" in parts:
            print("2. classification micro-benchmark ...", flush=True)
            results["micro"] = micro.run(config["micro_iterations"], DEVICE, config["db_batches"])
        if "proxy" in parts:
            print("1. proxy benchmark ...", flush=True)
            results["proxy"] = run_proxy(config, workdir, env)
        if "analyze" in parts:
            print(f"3. leakmap analyze on {config['har_entries']:,} HAR entries ...", flush=True)
            results["analyze"] = har_bench.run(config["har_entries"], DEVICE, workdir, env,
                                               str(BIN / "leakmap"))
    finally:
        results["elapsed_s"] = time.perf_counter() - started
        results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        # the proxies import leakmap when they start: a commit during the run mixes code
        try:
            results["git_commit_after"] = git_commit()
        except (OSError, subprocess.SubprocessError):
            results["git_commit_after"] = None
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(results))
    print(f"\nJSON: {args.out}")
    proxy = results.get("proxy", {})
    failed = bool(proxy) and not (proxy["summary"]["every_flow_logged"] and (
        not proxy["breakdown_sessions"] or proxy["breakdown"]["every_flow_logged"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
