"""The per-flow time budget (``leakmap_analysis_budget_ms``, ``Limits.budget_ms``).

A flow's decoding and classification stop when its budget is spent: the flow
keeps what was found, gets one note saying so and is marked truncated.
Known values are looked for as each value is decoded, before the slower
detectors, so an IMEI planted in a flow that runs out is still found.
Nothing here asserts speed beyond "it finished" (generous bounds).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import corpus
import pytest

from leakmap.core import protobuf
from leakmap.core.classify import Analysis, Classifier
from leakmap.core.decode import Limits, decompress
from leakmap.core.device import load_device
from leakmap.policies.model import load_policy

from conftest import SAMPLES

IMEI = corpus.IMEI
CAP = Limits().max_decoded_bytes
HANG = 5.0  # seconds: "did not hang", nothing finer


def classifier(budget_ms: int, policy: Path | None = None) -> Classifier:
    return Classifier(load_policy(policy), load_device(SAMPLES / "redmi-1s.yaml"),
                      Limits(budget_ms=budget_ms))


def budget_notes(analysis: Analysis) -> list[str]:
    return [e for e in analysis.errors if e.startswith("analysis budget of")]


def imei_fields(analysis: Analysis) -> set[str]:
    return {f.field for f in analysis.findings
            if f.data_type == "imei" and f.match == "known" and f.value == IMEI}


def timed(classify: Classifier, exchange) -> tuple[Analysis, float]:
    started = time.monotonic()
    analysis = classify.classify(exchange)
    return analysis, time.monotonic() - started


def luhn_numbers(count: int) -> list[str]:
    """``count`` different 15-digit numbers with a valid Luhn check digit."""
    numbers = []
    for n in range(count):
        body = f"35{n:012d}"
        total = 0
        for index, digit in enumerate(reversed(body)):
            value = int(digit) * (2 if index % 2 == 0 else 1)
            total += value - 9 if value > 9 else value
        numbers.append(body + str((10 - total % 10) % 10))
    return numbers


def test_a_huge_flow_that_runs_out_keeps_the_planted_imei_and_says_so() -> None:
    # 200,000 IMEI-shaped values: seconds of work without a budget
    body = json.dumps({f"k{i}": n for i, n in enumerate(luhn_numbers(200_000))}).encode()
    exchange = corpus.request("huge", body, "application/json",
                              headers=[("x-device", IMEI)])
    analysis, took = timed(classifier(30), exchange)
    assert took < HANG
    assert budget_notes(analysis) == ["analysis budget of 30 ms exhausted; findings so far kept"]
    assert analysis.truncated
    assert "request.headers.x-device" in imei_fields(analysis)


SLOW_POLICY = """
extends: default.yaml
data_types:
  slow_token:
    category: custom
    severity: low
    # accepted (two short repeats, a lookbehind: Python's engine), but each
    # 1 kB window of letters costs about a million backtracking steps
    pattern: {regex: '(?<![0-9])[a-z]{1,31}[a-z]{1,31}[0-9]'}
"""


# The pattern's loosened form (lookarounds dropped: core/pattern_gate.py) matches
# before every digit, so the gate lets the slow exact pattern run on every value;
# there the lookahead fails only after 31 x 31 ways of splitting the letters.
GATED_SLOW_POLICY = """
extends: default.yaml
data_types:
  slow_token:
    category: custom
    severity: low
    pattern: {regex: '(?<![0-9])[a-z]{1,31}[a-z]{1,31}(?=[0-9]x)[0-9]'}
"""


def test_known_values_are_found_before_a_slow_pattern_spends_the_budget(tmp_path: Path) -> None:
    policy = tmp_path / "slow.yaml"
    policy.write_text(GATED_SLOW_POLICY)
    # the IMEI sits at the very end: after 310 kB that take seconds without a budget
    text = (("abcdefghij" * 3 + "1") * 10_000 + " " + IMEI).encode()
    exchange = corpus.request("slow", text, "text/plain")
    analysis, took = timed(classifier(200, policy), exchange)
    assert took < HANG
    assert budget_notes(analysis) == ["analysis budget of 200 ms exhausted; findings so far kept"]
    assert analysis.truncated
    assert imei_fields(analysis) == {"request.body.text"}


def test_a_tight_budget_finds_less_than_a_loose_one() -> None:
    numbers = luhn_numbers(1_000)  # about 70 ms of work: far inside the loose budget
    body = json.dumps({f"k{i}": n for i, n in enumerate(numbers)}).encode()
    exchange = corpus.request("big", body, "application/json")
    tight, _ = timed(classifier(1), exchange)
    loose, took = timed(classifier(1_000), exchange)
    assert took < HANG
    assert budget_notes(loose) == [] and not loose.truncated
    found = {f.field for f in loose.findings if f.data_type == "imei"}
    assert found == {f"request.body.json.k{i}" for i in range(len(numbers))}
    assert budget_notes(tight) == ["analysis budget of 1 ms exhausted; findings so far kept"]
    assert tight.truncated
    assert len(tight.findings) < len(loose.findings)


def test_a_pattern_whose_loose_form_finds_nothing_is_not_run(tmp_path: Path) -> None:
    # 300 kB of letters without a digit: the slow pattern would take seconds, but
    # its loosened form needs a digit after letters, so the gate skips it
    policy = tmp_path / "slow.yaml"
    policy.write_text(SLOW_POLICY)
    exchange = corpus.request("slow", ("abcdefghij" * 30_000 + " " + IMEI).encode(), "text/plain")
    analysis, took = timed(classifier(0, policy), exchange)
    assert took < HANG
    assert analysis.errors == [] and not analysis.truncated
    assert imei_fields(analysis) == {"request.body.text"}


def test_no_budget_means_no_deadline(tmp_path: Path) -> None:
    policy = tmp_path / "slow.yaml"
    policy.write_text(SLOW_POLICY)
    exchange = corpus.request("small", b"abcdefghij" * 300 + b"x7 " + IMEI.encode(),
                              "text/plain")
    analysis = classifier(0, policy).classify(exchange)
    assert analysis.errors == [] and not analysis.truncated
    assert {f.data_type for f in analysis.findings} == {"imei", "slow_token"}


def test_a_decompression_bomb_stops_at_the_deadline_and_the_header_is_still_read() -> None:
    exchange = corpus.request("bomb", corpus.gzip_bomb(), "application/json",
                              headers=[("content-encoding", "gzip"), ("x-imei", IMEI)])
    analysis, took = timed(classifier(10), exchange)
    assert took < HANG
    assert budget_notes(analysis) == ["analysis budget of 10 ms exhausted; findings so far kept"]
    # inflating 32 MiB takes over 100 ms here: the deadline came first
    assert not any("decompression limit hit" in e for e in analysis.errors), analysis.errors
    assert imei_fields(analysis) == {"request.headers.x-imei"}


@pytest.mark.parametrize(("encoding", "bomb"), [
    ("gzip", corpus.gzip_bomb), ("deflate", corpus.zlib_bomb), ("br", corpus.brotli_bomb),
    ("zstd", corpus.zstd_bomb),
])
def test_decompression_past_its_deadline_gives_nothing_at_once(encoding: str, bomb) -> None:
    data = bomb()
    out, _ = decompress(data, encoding, CAP, deadline=time.monotonic() - 1)
    assert out == b""
    whole, hit_cap = decompress(data, encoding, CAP)  # no deadline: up to the cap
    assert hit_cap and len(whole) == CAP


def test_protobuf_parsing_stops_at_its_deadline() -> None:
    message = b"".join(b"\x08" + bytes([i % 100]) for i in range(100_000))  # field 1, varints
    everything = protobuf.parse(message)
    assert everything is not None and len(everything) == 100_000
    notes: list[str] = []
    late = protobuf.parse(message, notes=notes, deadline=time.monotonic() - 1)
    assert late is not None and len(late) < 2_000
    assert notes == []  # running out of time is the caller's to note


def test_out_of_time_the_detectors_still_read_the_start_of_the_flow() -> None:
    """Decoding a 16 MB text takes the whole budget; an IMEI that only its pattern finds
    (not the device's) at the start of the body is still found: each detector reads the
    first chunks of values whatever the clock says."""
    pattern_only = "356938035643809"  # a valid IMEI, not the sample device's
    body = b'{"imei": "' + pattern_only.encode() + b'", "pad": "' + b"A" * (16 << 20)
    exchange = corpus.request("giant", body, "application/json")
    analysis, took = timed(classifier(1), exchange)
    assert took < HANG
    assert budget_notes(analysis) == ["analysis budget of 1 ms exhausted; findings so far kept"]
    assert [(f.data_type, f.match, f.value) for f in analysis.findings] == [
        ("imei", "pattern", pattern_only)]
