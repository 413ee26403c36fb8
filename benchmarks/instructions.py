"""Instructions per request in the proxy's process: leakmap against bare mitmdump, by callgrind.

    .venv/bin/python benchmarks/instructions.py [--requests 300]

Requests per second move with whatever else the machine does (see
docs/performance.md); instructions do not.  Each proxy runs under
``valgrind --tool=callgrind`` with counting switched off; it is switched on
(``callgrind_control -i on``) only around one load of ``--requests`` POSTs
on 4 keep-alive connections, after a warm-up and a pause in which leakmap's
analysis process is ready.  Only the proxy's own process is counted: the
analysis and capture processes run natively.  The proxies start slowly under
valgrind (leakmap a few minutes: its pipeline is built there too; the whole run took 4 minutes here).  Prints
the totals and the ratio; needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bigprofile  # noqa: E402
import loadgen  # noqa: E402
import payloads  # noqa: E402
import run  # noqa: E402

from servers import free_port, wait_for_port  # noqa: E402

CONNECTIONS = 4


def count(variant: str, requests: int, workdir: Path, origin: run.Origin, device: Path,
          env: dict[str, str]) -> int:
    """Instructions the ``variant`` proxy's process executes for ``requests`` requests."""
    authority = f"localhost:{origin.port}"
    wires = [r.wire(authority) for r in payloads.make_requests(requests)]
    warm = [r.wire(authority) for r in payloads.make_requests(20, seed=99)]
    ca = str(workdir / "mitmproxy-conf" / "mitmproxy-ca-cert.pem")
    port = free_port()
    command = run.proxy_command(variant, port, workdir / "mitmproxy-conf", workdir / f"{variant}.db",
                                f"instructions-{variant}", device)
    out = workdir / f"callgrind-{variant}.out"
    python = Path(command[0]).parent / "python"
    proxy = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                              f"--callgrind-out-file={out}", str(python), *command],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proxy, timeout=1800)
        loadgen.run_load(warm, CONNECTIONS, origin.port, ca, port)
        time.sleep(20)  # leakmap's analysis process is ready, the warm-up analysed
        switch_counting(proxy.pid, "on")
        result = loadgen.run_load(wires, CONNECTIONS, origin.port, ca, port)
        switch_counting(proxy.pid, "off")
        if result.ok != requests:
            raise RuntimeError(f"{variant}: {result.ok} of {requests} requests answered")
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(600)
    return total_instructions(out)


def switch_counting(pid: int, state: str) -> None:
    """Counting on or off in the process ``pid`` runs under callgrind."""
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)


def total_instructions(out: Path) -> int:
    """The instructions counted in callgrind's output file ``out``."""
    totals = re.search(r"^totals: (\d+)", out.read_text(errors="replace"), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no totals in {out}")
    return int(totals.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="copy callgrind's output files here "
                        "(for callgrind_annotate: which C functions the extra goes to)")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="leakmap-instructions-") as folder:
        workdir = Path(folder)
        env = dict(os.environ, LEAKMAP_HOME=str(workdir / "home"))
        device = bigprofile.write_profile(workdir / "device-1000.yaml")
        origin = run.Origin(workdir)
        try:
            # bare first, natively: it writes the CA into the shared confdir
            port = free_port()
            first = subprocess.Popen(run.proxy_command("bare", port, workdir / "mitmproxy-conf",
                                                       workdir / "x.db", "x", device),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_port(port, first, timeout=120)
            first.terminate()
            first.wait()
            counts = {variant: count(variant, args.requests, workdir, origin, device, env)
                      for variant in ("bare", "leakmap")}
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
                for variant in counts:
                    shutil.copy(workdir / f"callgrind-{variant}.out", args.keep)
        finally:
            origin.stop()
    per_request = {variant: total / args.requests for variant, total in counts.items()}
    for variant, value in per_request.items():
        print(f"{variant:8s} {value / 1e6:8.2f} M instructions per request")
    print(f"leakmap / bare: {per_request['leakmap'] / per_request['bare']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
