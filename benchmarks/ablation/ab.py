"""A/B of proxy variants against bare mitmdump: alternating loads, paired ratios, CPU per request.

    .venv/bin/python benchmarks/ablation/ab.py --rounds 12 leakmap= "nocap=--capture-dir none" \\
        "other=mitmdump:-s /path/to/script.py --set leakmap_device=..."

Each ``NAME=ARGS`` is a variant: ``leakmap run`` with ARGS (the benchmark's device profile
and an SQLite file of its own are given), or with ``mitmdump:`` bare mitmdump with ARGS;
``{device}`` and ``{workdir}`` in ARGS stand for the profile and the run's folder.
``bare`` (mitmdump alone) is always there.  Every variant gets the same warm-up, then round
after round each in turn (the order rotates) sends ``--requests`` 2 KB POSTs on 16
keep-alive connections.  Per variant it prints the median req/s, the median of its ratios
to bare in the same round, and its event loop's CPU per request (``run.thread_cpu_s``, 10 ms ticks):
on this machine identical proxies differ by up to 8 % in a dozen rounds, so a difference
smaller than that needs several runs, or ``benchmarks/instructions.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bigprofile  # noqa: E402
import loadgen  # noqa: E402
import payloads  # noqa: E402
import run  # noqa: E402

from servers import free_port, wait_for_port  # noqa: E402

CONNECTIONS = 16


def command(name: str, args: str, port: int, workdir: Path, device: Path) -> list[str]:
    """The benchmark's own proxy command (``run.proxy_command``), with the variant's ARGS."""
    args = args.replace("{device}", str(device)).replace("{workdir}", str(workdir))
    bare = name == "bare" or args.startswith("mitmdump:")
    base = run.proxy_command("bare" if bare else "leakmap", port, workdir / "conf",
                             workdir / f"{name}.db", name, device)
    return [*base, *shlex.split(args.removeprefix("mitmdump:"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("variants", nargs="+", help="NAME=ARGS")
    options = parser.parse_args()
    variants = {"bare": "", **dict(v.split("=", 1) for v in options.variants)}
    workdir = Path(tempfile.mkdtemp(prefix="leakmap-ab-"))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["LEAKMAP_HOME"] = str(workdir / "home")
    device = bigprofile.write_profile(workdir / "device.yaml")
    env["AB_DEVICE"] = str(device)  # for scripts of a variant
    origin = run.Origin(workdir)
    authority = f"localhost:{origin.port}"
    wires = [r.wire(authority) for r in payloads.make_requests(options.requests)]
    warm = [r.wire(authority) for r in payloads.make_requests(100, seed=99)]
    ca = str(workdir / "conf" / "mitmproxy-ca-cert.pem")
    proxies: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, args in variants.items():  # bare first: it writes the CA
            port = free_port()
            log = (workdir / f"{name}.log").open("wb")
            process = subprocess.Popen(command(name, args, port, workdir, device), env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
            wait_for_port(port, process, timeout=120)
            proxies[name] = (process, port)
        for _process, port in proxies.values():
            loadgen.run_load(warm, CONNECTIONS, origin.port, ca, port)
        time.sleep(3)  # leakmap's analysis process is up and has analysed the warm-up
        rps: dict[str, list[float]] = {name: [] for name in proxies}
        cpu: dict[str, list[float]] = {name: [] for name in proxies}
        names = list(proxies)
        for round_no in range(options.rounds):
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                process, port = proxies[name]
                before = run.thread_cpu_s(process.pid)
                result = loadgen.run_load(wires, CONNECTIONS, origin.port, ca, port)
                cpu[name].append((run.thread_cpu_s(process.pid) - before) * 1e6
                                 / max(result.ok, 1))
                rps[name].append(result.ok / result.wall_s)
                if name != "bare":
                    time.sleep(1.0)  # its analysis done before the next load
        for name in names:
            paired = statistics.median(m / b for m, b in zip(rps[name], rps["bare"], strict=True))
            print(f"{name:12s} {statistics.median(rps[name]):7.1f} req/s  paired ratio "
                  f"{paired:.3f}  loop CPU {statistics.median(cpu[name]):6.0f} us/request  "
                  f"rounds {[round(x) for x in rps[name]]}", flush=True)
    finally:
        for process, _port in proxies.values():
            process.send_signal(signal.SIGTERM)
        for process, _port in proxies.values():
            process.wait(60)
        origin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
