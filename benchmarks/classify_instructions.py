"""Instructions per 2 KB body for classification and for the matcher alone, by callgrind.

    .venv/bin/python benchmarks/classify_instructions.py [--bodies 300]
    .venv/bin/python benchmarks/classify_instructions.py --template json_network \
        --what classify,leaves,json_hot,decoding,detect

``--template`` counts the bodies of one of ``payloads.TEMPLATES`` only, and
``--what`` parts of the classification (:data:`PARTS`) besides the whole of it.

``classify_mb_s`` and ``match_mb_s`` move with the machine's speed by a third
from one hour to the next here (docs/performance.md); instructions hardly do (runs of
the same code agree within about 1 %: 1,476 to 1,493 K in five; once, one ran 4 % low).
So a change to the classifier is judged here first, old and new code counted one after
the other; a change smaller than 1 % cannot be seen.
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
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import bigprofile  # noqa: E402
import instructions  # noqa: E402
import micro  # noqa: E402
import payloads  # noqa: E402
from workload import Request  # noqa: E402

WHAT = ("classify", "match")
# What each can count: the whole, the known-value matcher alone, and parts of classify
PARTS = {
    "classify": "Classifier.classify",
    "match": "KnownMatcher.search alone",
    "leaves": "decoding (exchange_leaves, with the raw gates that pick what to walk)",
    "json_hot": "the raw gates of a JSON body (Classifier._json_hot)",
    "form_hot": "the raw gates of a form body (Classifier._form_hot)",
    "decoding": "finding a JSON body's strings that are base64 or hex of text",
    "detect": "the detectors over the decoded values (Classifier._detect)",
}


def _template_labels() -> list[str]:
    """The ``template`` label of each kind of body (``json_network``, ``form_contacts_pii``...)."""
    return [make(0, random.Random(0)).template for make in payloads.TEMPLATES]


def _requests(bodies: int, template: str | None, seed: int = 5) -> list[Request]:
    every = len(payloads.TEMPLATES) if template else 1
    requests = payloads.make_bytes(bodies * every * 2200, seed=seed)
    return [r for r in requests if template in (None, r.template)][:bodies]


def _count_here(what: str, bodies: int, template: str | None, fresh: bool = False) -> None:
    """Inside valgrind: warm up, then count one pass of ``what`` over ``bodies`` bodies.

    ``fresh``: warm up on other bodies (another seed), so that the counted pass meets its
    ids and tokens for the first time, as the headline benchmark's single pass does.
    """
    from leakmap.core.decode import exchange_leaves
    from leakmap.wiring import build_pipeline

    with tempfile.TemporaryDirectory(prefix="leakmap-instr-") as folder:
        device = bigprofile.write_profile(Path(folder) / "device-1000.yaml")
        requests = _requests(bodies, template)
        classifier = build_pipeline(device=str(device)).pipeline.classifier
    exchanges = [micro.exchange_for(request, index) for index, request in enumerate(requests)]
    texts = [request.body.decode("utf-8", "replace") for request in requests]
    raw = [request.body for request in requests]

    def match(index: int) -> None:
        for _hit in classifier.known.search(texts[index]):
            pass

    def leaves(index: int) -> Any:
        return exchange_leaves(exchanges[index], classifier.limits, None, lambda _: None,
                               classifier._json_hot, classifier._form_hot,
                               classifier._known_quiet)

    # warm up: what a long run has cached (short decodings, quiet headers); each part
    # counted is a piece of classify, or the matcher it calls
    warm_up = ([micro.exchange_for(request, index) for index, request
                in enumerate(_requests(bodies, template, seed=6))] if fresh else exchanges)
    for exchange in warm_up:
        classifier.classify(exchange)
    decoded = [leaves(index) for index in range(len(exchanges))] if what == "detect" else []
    parts: dict[str, Callable[[int], object]] = {
        "classify": lambda index: classifier.classify(exchanges[index]),
        "match": match,
        "leaves": leaves,
        "json_hot": lambda index: classifier._json_hot(raw[index]),
        "form_hot": lambda index: classifier._form_hot(raw[index]),
        "decoding": lambda index: classifier._decoding_strings(texts[index]),
        "detect": lambda index: classifier._detect(decoded[index], lambda _: None, []),
    }
    run = parts[what]
    bodies = len(exchanges)
    instructions.switch_counting(os.getpid(), "on")
    for index in range(bodies):
        run(index)
    instructions.switch_counting(os.getpid(), "off")


def count(what: str, bodies: int, workdir: Path, template: str | None = None,
          fresh: bool = False) -> float:
    """Instructions per body of ``what``, counted in a child under callgrind."""
    out = workdir / f"callgrind-{what}.out"
    env = dict(os.environ, PYTHONHASHSEED="0")
    chosen = (["--template", template] if template else []) + (["--fresh"] if fresh else [])
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}", sys.executable, __file__,
                    "--inside", what, "--bodies", str(bodies), *chosen],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return instructions.total_instructions(out) / bodies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=300)
    parser.add_argument("--template", choices=_template_labels(),
                        help="only the bodies of this template (default: the mix)")
    parser.add_argument("--what", default=",".join(WHAT),
                        help=f"comma-separated, of: {', '.join(PARTS)} (default: %(default)s)")
    parser.add_argument("--fresh", action="store_true",
                        help="warm up on other bodies: count a first pass over these, as the "
                             "headline benchmark times one (default: a second pass)")
    parser.add_argument("--inside", choices=list(PARTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        _count_here(args.inside, args.bodies, args.template, args.fresh)
        return 0
    wanted = args.what.split(",")
    if unknown := [what for what in wanted if what not in PARTS]:
        parser.error(f"unknown --what {', '.join(unknown)}; known: {', '.join(PARTS)}")
    if not shutil.which("valgrind"):
        print("valgrind not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="leakmap-instructions-") as folder:
        for what in wanted:
            per_body = count(what, args.bodies, Path(folder), args.template, args.fresh)
            print(f"{what:8s} {per_body / 1e3:8.1f} K instructions per body"
                  f"  ({PARTS[what]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
