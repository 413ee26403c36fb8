"""Review makes its console lines only where someone reads them.

mitmproxy hands every log record to every addon; a line that no handler
takes (mitmdump at ``termlog_verbosity=error``) is pure cost, per flow with
findings.  ``read_level`` says from which level lines are read.
"""

from __future__ import annotations

import logging

import pytest
from mitmproxy import log as mitmproxy_log
from mitmproxy.test import taddons

from leakmap.addons.review import read_level


@pytest.fixture
def leakmap_log() -> logging.Logger:
    """A logger of its own, with no parent: pytest attaches its capture handlers, which
    read everything, to the root and to every logger it knows of."""
    return logging.Logger("leakmap-review-test")


def _handler(level: int) -> logging.Handler:
    handler = logging.NullHandler()
    handler.setLevel(level)
    return handler


def test_lines_are_read_from_the_lowest_level_a_handler_takes(leakmap_log: logging.Logger) -> None:
    assert read_level([], leakmap_log) > logging.CRITICAL  # nobody: nothing is made
    leakmap_log.addHandler(_handler(logging.ERROR))  # mitmdump --set termlog_verbosity=error
    assert read_level([], leakmap_log) == logging.ERROR
    leakmap_log.addHandler(_handler(logging.INFO))  # the terminal at its default, or a script's
    assert read_level([], leakmap_log) == logging.INFO


def test_mitmproxys_legacy_event_handler_alone_reads_nothing(leakmap_log: logging.Logger) -> None:
    with taddons.context() as tctx:
        leakmap_log.addHandler(mitmproxy_log.LegacyLogEvents(tctx.master))
        assert read_level([], leakmap_log) > logging.CRITICAL


def test_an_addon_listening_to_add_log_reads_everything(leakmap_log: logging.Logger) -> None:
    class OldStyle:
        def add_log(self, entry: object) -> None: ...

    class Parent:
        def __init__(self) -> None:
            self.addons = [OldStyle()]

    leakmap_log.addHandler(_handler(logging.ERROR))
    assert read_level([Parent()], leakmap_log) == logging.NOTSET


def test_console_lines_print_no_control_character_the_phone_sent() -> None:
    """A Host header or a JSON key from the app could carry escape sequences, or a line break
    and a forged line of its own: each line of Review's is made printable first."""
    from leakmap.addons.review import Review
    from leakmap.core.exchange import Exchange
    from leakmap.core.pipeline import FindingRecord, FlowRecord

    forged = "x\nleakmap: high imei (known, plain) at request.body.json.fake -> fake.example"
    exchange = Exchange(flow_id="f", kind="http", timestamp=0.0, host="evil\x1b[2J.example",
                        server_ip="127.0.0.1", url="https://evil\x1b[2J.example/\r",
                        error=None)
    record = FlowRecord(
        exchange=exchange, country="CN", action="alert", action_rule="rules.alert\x07",
        analysis_error="malformed JSON\x1b[31m",
        findings=[FindingRecord(field=f"request.body.json.{forged}", data_type="imei",
                                category="identifier", severity="high", encoding="plain",
                                match="pattern", preview="3569•••••••3809", value_hash="h",
                                action="alert")])
    review = Review()
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda entry: lines.append(entry.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("leakmap")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        review._log(record)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(lines) == 3  # the alert, the finding, the analysis problem
    for line in lines:
        assert line.isprintable(), repr(line)
    assert "evil?[2J.example" in lines[0] and "x?leakmap: high imei" in lines[1]


def test_policy_test_prints_no_control_character_of_a_sample() -> None:
    from leakmap.cli.samples import as_text
    from leakmap.core.exchange import Exchange
    from leakmap.core.pipeline import FindingRecord, FlowRecord

    exchange = Exchange(flow_id="f", kind="http", timestamp=0.0, method="POST",
                        url="https://a.example/\x1b[2J", server_ip="127.0.0.1")
    record = FlowRecord(exchange=exchange, analysis_error="bad\nflow 2: forged", findings=[
        FindingRecord(field="request.body.json.k\x1b]0;x\x07", data_type="imei",
                      category="identifier", severity="high", encoding="plain",
                      match="pattern", preview="3569•••••••3809", value_hash="h")])
    text = as_text([record], show_values=False)
    assert all(line.isprintable() for line in text.split("\n"))
    assert "flow 2: forged" not in text.split("\n")[3:] and "bad?flow 2: forged" in text


def test_review_makes_nothing_no_one_would_see() -> None:
    """In mitmdump (no flow on screen, none saved) reading only errors, a flow with findings
    that no rule acted on shows nothing: Review leaves it unmarked without making its
    record; a rule's action, a lower level read, or marks someone sees, and it is shown."""
    from mitmproxy.test import tflow

    from leakmap.addons.review import Review

    finding = {"data_type": "imei", "field": "request.body.json.imei"}
    review = Review()
    review.marks_seen, review.read_from = False, logging.ERROR
    assert not review._seen({"findings": [finding], "action": "log"})
    assert review._seen({"findings": [finding], "action": "alert"})
    assert not review._seen({"analysis_error": "malformed JSON", "action": "log"})
    review.read_from = logging.WARNING
    assert review._seen({"findings": [finding], "action": "log"})
    review.read_from, review.marks_seen = logging.ERROR, True
    assert review._seen({"findings": [finding], "action": "log"})

    review.marks_seen = False
    flow = tflow.tflow(resp=True)
    flow.metadata["leakmap"] = {"session": "s", "findings": [finding], "action": "log"}
    review.show(flow)  # no record could be made of this summary: none is tried
    assert flow.metadata["leakmap_reviewed"] == "s" and not flow.marked
