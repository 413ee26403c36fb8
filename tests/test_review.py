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
