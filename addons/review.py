"""Review: marks flows with findings so the analyst sees them while the phone is in hand.

In mitmweb and mitmproxy's console a flow with findings is marked and
commented with its data types and destination; mitmdump prints one line per
finding.  Lines that would reach no one (``termlog_verbosity`` above the
line's level in mitmdump) are not made: mitmproxy hands every log record to
every addon, some 150 µs a record on the development machine.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, hooks, tls
from mitmproxy import log as mitmproxy_log
from mitmproxy.addonmanager import traverse
from mitmproxy.flow import Flow

from leakmap.addons.handover import (
    ANSWER_ACTION,
    ANSWER_ALL,
    ANSWER_FINDINGS,
    ANSWER_PROBLEM,
    answer_wanted,
)
from leakmap.addons.inspector import flow_record, quiet, tls_records
from leakmap.core.pipeline import FlowRecord
from leakmap.core.redact import printable

log = logging.getLogger("leakmap")

MARKER = ":warning:"
WATCHED_MARKER = ":rotating_light:"  # findings that went to a watched destination
# a policy's actions (core/actions.py): what it said to do with the flow
ACTION_MARKERS = {"alert": ":bell:", "block": ":no_entry:", "redact": ":scissors:"}


def destination(record: FlowRecord) -> str:
    """``CN``, ``Beijing, CN``, ``SG, operated by Xiaomi (CN)``; ``[watched: ...]`` when watched."""
    place = record.country or record.geo_scope or "unknown"
    if record.city:
        place = f"{record.city}, {place}"
    if record.operator:
        place += f", operated by {record.operator} ({record.operator_country or '?'})"
    if record.watched:
        place += f" [watched: {record.watch_reason}]"
    return place


def comment(record: FlowRecord) -> str:
    types = ", ".join(dict.fromkeys(f.data_type for f in record.findings))
    acted = f" [{record.action} by {record.action_rule}]" if record.action != "log" else ""
    return f"leakmap: {types} -> {destination(record)}{acted}"


def action_line(record: FlowRecord) -> str:
    """The prominent line of a flow a rule alerts on, blocked or redacted."""
    host = record.exchange.host or record.exchange.server_ip or "?"
    types = ", ".join(dict.fromkeys(f.data_type for f in record.findings if f.action != "log"))
    done = {"alert": "ALERT", "block": "BLOCKED", "redact": "REDACTED"}[record.action]
    if not record.enforced and record.action in ("block", "redact"):
        done = f"WOULD BE {done} (not enforced)"
    return (f"leakmap {'!' * 3} {done}: {types} -> {host} [{record.exchange.server_ip or '-'}, "
            f"{destination(record)}] by {record.action_rule}")


def finding_lines(record: FlowRecord) -> list[str]:
    host = record.exchange.host or record.exchange.server_ip or "?"
    return [
        f"leakmap: {f.severity} {f.data_type} ({f.match}, {f.encoding}) at {f.field} "
        f"-> {host} [{record.exchange.server_ip or '-'}, {destination(record)}]"
        for f in record.findings
    ]


class Review:
    """Marks, comments and logs each flow the Inspector hands over (see ``show``)."""

    def __init__(self) -> None:
        # mitmweb and the console show flows (their "view" addon); mitmdump shows none, and
        # an update hook would walk every addon for nothing, per flow with findings
        self.flows_on_screen = True
        # someone sees a flow's marks and comment: it is on screen, or saved (-w)
        self.marks_seen = True
        # the lowest log level someone reads (see read_level); all until known
        self.read_from = logging.NOTSET

    def running(self) -> None:
        self.flows_on_screen = ctx.master.addons.get("view") is not None
        self.marks_seen = self.flows_on_screen or bool(ctx.options.save_stream_file)
        self.read_from = read_level(ctx.master.addons.chain)

    def answers_wanted(self) -> int:
        """Which flows the analysis process stored Review needs to see (the handover's
        ``ANSWER_*`` marks): those of which :meth:`_seen` could be true."""
        if self.marks_seen:
            return ANSWER_ALL
        return ((ANSWER_ACTION if self.read_from <= logging.ERROR else 0)
                | (ANSWER_FINDINGS if self.read_from <= logging.WARNING else 0)
                | (ANSWER_PROBLEM if self.read_from <= logging.INFO else 0))

    def configure(self, updated: set[str]) -> None:
        if "termlog_verbosity" in updated or "eventlog_verbosity" in updated:
            self.read_from = read_level(ctx.master.addons.chain)
        if "save_stream_file" in updated:
            self.marks_seen = self.flows_on_screen or bool(ctx.options.save_stream_file)

    def show(self, flow: Flow) -> None:
        summary = flow.metadata.get("leakmap") or {}
        session = summary.get("session")
        if session is None or flow.metadata.get("leakmap_reviewed") == session:
            return  # not analysed yet, or already shown in this session
        if quiet(summary) or not self._seen(summary):  # no record needed (most flows)
            flow.metadata["leakmap_reviewed"] = session
            return
        record = flow_record(flow)
        if record is None:
            return
        flow.metadata["leakmap_reviewed"] = session
        if record.findings:
            flow.marked = ACTION_MARKERS.get(record.action) or (
                WATCHED_MARKER if record.watched else MARKER)
            flow.comment = (flow.comment + "\n" if flow.comment else "") + comment(record)
            if self.flows_on_screen:  # it may be shown already: its response went out first
                ctx.master.addons.trigger(hooks.UpdateHook([flow]))
        self._log(record)

    def _seen(self, summary: dict[str, Any]) -> bool:
        """Whether anyone would see what :meth:`show` makes of the flow ``summary`` is of:
        its marks, or one of the lines :meth:`_log` writes at the levels read.  mitmdump with
        ``termlog_verbosity=error`` shows nothing of a flow that a rule did not act on.
        The same test the analysis process makes before it answers (:meth:`answers_wanted`)."""
        return answer_wanted(self.answers_wanted(), summary, stored=True)

    def _log(self, record: FlowRecord) -> None:
        """Each line printable: a host or a JSON key from the phone could otherwise carry
        escape sequences, or a line break and a forged finding line of its own."""
        if record.action != "log" and self.read_from <= logging.ERROR:
            log.error(printable(action_line(record)))  # above the findings: must not scroll by
        lines = finding_lines(record) if self.read_from <= logging.WARNING else []
        if lines:  # one log record per flow: mitmproxy hands each record to every addon
            log.warning("\n".join(map(printable, lines)))
        if record.analysis_error and self.read_from <= logging.INFO:
            log.info("leakmap: analysis problem on %s: %s", printable(record.exchange.url or
                     record.exchange.host or ""), printable(record.analysis_error))

    def tls_failed_client(self, data: tls.TlsData) -> None:
        if self.read_from > logging.INFO:
            return
        for record in tls_records(data):
            log.info(printable(f"leakmap: TLS refused by client for {record.exchange.sni} "
                               f"[{record.exchange.server_ip}, {destination(record)}]"))


def read_level(chain: list[object], leakmap_log: logging.Logger = log) -> int:
    """The lowest level of leakmap's log records that reaches anyone: a handler of the
    ``leakmap`` logger or above it that takes them (mitmproxy's terminal at its
    ``termlog_verbosity``, mitmweb's event log, a script's own handler), or an addon
    still listening to mitmproxy's deprecated ``add_log`` hook (then every level)."""
    if any(hasattr(addon, "add_log") for addon in traverse(chain)):
        return logging.NOTSET
    levels = [logging.CRITICAL + 1]
    logger: logging.Logger | None = leakmap_log
    while logger is not None:
        levels += [handler.level for handler in logger.handlers
                   if not isinstance(handler, mitmproxy_log.LegacyLogEvents)]
        logger = logger.parent if logger.propagate else None
    return max(min(levels), leakmap_log.getEffectiveLevel())
