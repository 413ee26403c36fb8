"""Instructions per 2 KB body for classification and for the matcher alone, by callgrind.

    .venv/bin/python benchmarks/classify_instructions.py [--bodies 300]

``classify_mb_s`` and ``match_mb_s`` move with the machine's speed by a third
from one hour to the next here (docs/performance.md); instructions hardly do (runs of
the same code agree within about 1 %: 1,476 to 1,493 K in five).  So a change to the
classifier is judged here first; a change smaller than 1 % cannot be seen.
The script runs itself under ``valgrind --tool=callgrind`` with counting
off, builds the pipeline of the benchmark's 1,000-value device profile,
runs the headline benchmark's bodies once to fill the caches a long run
fills (short decodings, phone numbers), then counts one more pass over the
same bodies (``callgrind_control -i on``/``off`` around it).  The hash seed
is fixed, so sets and dicts of strings iterate alike in every run (what is left to vary:
the addresses objects get).  Needs valgrind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bigprofile  # noqa: E402
import instructions  # noqa: E402
import micro  # noqa: E402
import payloads  # noqa: E402

WHAT = ("classify", "match")


def _count_here(what: str, bodies: int) -> None:
    """Inside valgrind: warm up, then count one pass of ``what`` over ``bodies`` bodies."""
    from leakmap.wiring import build_pipeline

    with tempfile.TemporaryDirectory(prefix="leakmap-instr-") as folder:
        device = bigprofile.write_profile(Path(folder) / "device-1000.yaml")
        requests = payloads.make_bytes(bodies * 2200)[:bodies]
        classifier = build_pipeline(device=str(device)).pipeline.classifier
    exchanges = [micro.exchange_for(request, index) for index, request in enumerate(requests)]
    texts = [request.body.decode("utf-8", "replace") for request in requests]

    def match(index: int) -> None:
        for _hit in classifier.known.search(texts[index]):
            pass

    run: Callable[[int], object] = (
        (lambda index: classifier.classify(exchanges[index])) if what == "classify" else match)
    for index in range(bodies):
        run(index)
    instructions.switch_counting(os.getpid(), "on")
    for index in range(bodies):
        run(index)
    instructions.switch_counting(os.getpid(), "off")


def count(what: str, bodies: int, workdir: Path) -> float:
    """Instructions per body of ``what``, counted in a child under callgrind."""
    out = workdir / f"callgrind-{what}.out"
    env = dict(os.environ, PYTHONHASHSEED="0")
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", sys.executable, __file__,
                    "--inside", what, "--bodies", str(bodies)],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return instructions.total_instructions(out) / bodies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=300)
    parser.add_argument("--inside", choices=WHAT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        _count_here(args.inside, args.bodies)
        return 0
    if not shutil.which("valgrind"):
        print("valgrind not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="leakmap-instructions-") as folder:
        for what in WHAT:
            per_body = count(what, args.bodies, Path(folder))
            print(f"{what:8s} {per_body / 1e3:8.1f} K instructions per body", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
