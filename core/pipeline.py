"""One flow in, one record out: classification, geolocation and redaction.

:class:`Pipeline` is the single function behind the live addon and ``leakmap
analyze``.  Its output, :class:`FlowRecord`, is what the store writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from leakmap.core.actions import Place, decide
from leakmap.core.classify import Analysis, Classifier, Finding
from leakmap.core.destination import Destination
from leakmap.core.exchange import Exchange, check_time, check_url
from leakmap.core.redact import keyed_hash, mask
from leakmap.policies.model import ActionRule

DESTINATION_FIELDS = tuple(f.name for f in fields(Destination))


class Locating(Protocol):
    def locate(self, exchange: Exchange) -> Destination: ...

    def start_capture(self) -> None: ...


@dataclass(frozen=True)
class FindingRecord:
    field: str
    data_type: str
    category: str
    severity: str
    encoding: str
    match: str
    preview: str
    value_hash: str
    raw_value: str | None = None
    action: str = "log"  # what the policy's actions say for this finding (core/actions.py)


@dataclass
class FlowRecord:
    """One flow as stored: the exchange, where it went (see Destination), what it held."""

    exchange: Exchange
    geo_ip: str | None = None
    geo_ip_source: str | None = None
    geo_scope: str | None = None
    country: str | None = None
    city: str | None = None
    asn: int | None = None
    as_org: str | None = None
    domain: str | None = None
    operator: str | None = None
    operator_country: str | None = None
    attribution: str | None = None
    watched: bool = False
    watch_reason: str | None = None
    findings: list[FindingRecord] = field(default_factory=list)
    analysis_error: str | None = None
    truncated: bool = False
    policy_sha256: str | None = None  # the policy that judged the flow (hot reload changes it)
    action: str = "log"  # log | alert | block | redact: what the policy says (core/actions.py)
    action_rule: str | None = None  # the rule that said it
    enforced: bool = False  # the live proxy acted on it (offline: what it would have done)

    def destination(self) -> Destination:
        return Destination(**{name: getattr(self, name) for name in DESTINATION_FIELDS})


@dataclass
class Pipeline:
    classifier: Classifier
    locator: Locating
    hash_key: bytes
    store_raw: bool = False

    def process(self, exchange: Exchange) -> FlowRecord:
        """Classify, locate and redact one flow.  Never raises on flow content."""
        return place(self.locator, self.inspect(exchange), self.classifier.policy.actions)

    def inspect(self, exchange: Exchange) -> FlowRecord:
        """Classify and redact one flow, without its destination (see :func:`place`).

        What does not depend on other flows: ``leakmap analyze`` runs it in
        several processes at once and places the records in capture order.
        """
        # a capture's own fields: the flow is stored anyway
        notes = [note for note in (check_time(exchange), check_url(exchange)) if note]
        try:
            analysis = self.classifier.classify(exchange)
        except Exception as e:  # the record must exist even if analysis breaks
            analysis = Analysis(errors=[f"analysis failed: {type(e).__name__}: {e}"])
        errors = [*analysis.errors, *notes] if notes else analysis.errors
        return FlowRecord(
            exchange=exchange,
            findings=[self._redact(finding) for finding in analysis.findings],
            analysis_error="; ".join(errors) or None,
            truncated=analysis.truncated,
            policy_sha256=self.classifier.policy.sha256,
        )

    def _redact(self, finding: Finding) -> FindingRecord:
        return FindingRecord(
            field=finding.field,
            data_type=finding.data_type,
            category=finding.category,
            severity=finding.severity,
            encoding=finding.encoding,
            match=finding.match,
            preview=mask(finding.value),
            value_hash=keyed_hash(self.hash_key, finding.value),
            raw_value=finding.value if self.store_raw else None,
        )


def place(locator: Locating, record: FlowRecord, rules: Sequence[ActionRule] = ()) -> FlowRecord:
    """``record`` with its destination, and the action ``rules`` give it, filled in.  Flows
    must be placed in capture order: the locator learns DNS answers from earlier flows.
    Never raises on flow content."""
    try:
        destination = locator.locate(record.exchange)
    except Exception as e:  # never lose the flow over a lookup
        destination = Destination()
        problem = f"destination lookup failed: {type(e).__name__}: {e}"
        record.analysis_error = f"{record.analysis_error}; {problem}" if record.analysis_error else problem
    vars(record).update(vars(destination))
    judge(record, rules)
    return record


def judge(record: FlowRecord, rules: Sequence[ActionRule]) -> None:
    """Set the action ``rules`` give ``record`` (placed) and each of its findings."""
    where = Place(record.exchange.host or record.exchange.sni, record.country,
                  record.operator_country, record.watched)
    decision = decide(rules, record.findings, where)
    record.action, record.action_rule = decision.action, decision.rule_label
    if decision.action != "log":  # records are frozen; most flows keep theirs as they are
        record.findings = [replace(finding, action=action) if action != finding.action else finding
                           for finding, action in zip(record.findings, decision.per_finding,
                                                      strict=True)]


def scalar_fields(instance: Any) -> dict[str, Any]:
    """The fields of a dataclass whose fields are all scalars, as a new dict.

    What ``dataclasses.asdict`` gives for such a class, without its recursive
    deep copy (several microseconds a call, and records are made per flow).
    """
    return dict(vars(instance))


def mark_enforced(record: FlowRecord, enforced: dict[str, Any] | None) -> None:
    """What the live proxy did to the request (``{action, rule, ...}``), on its record: the
    flow is recorded as blocked or redacted, by that rule."""
    if enforced:
        record.action, record.action_rule, record.enforced = enforced["action"], enforced["rule"], True


def record_summary(record: FlowRecord) -> dict[str, Any]:
    """``record`` without its exchange, as plain data (mitmproxy flow metadata)."""
    return {
        **scalar_fields(record.destination()),
        "analysis_error": record.analysis_error,
        "truncated": record.truncated,
        "policy_sha256": record.policy_sha256,
        "action": record.action,
        "action_rule": record.action_rule,
        "enforced": record.enforced,
        "findings": [scalar_fields(finding) for finding in record.findings],
    }


def record_from_summary(exchange: Exchange, summary: dict[str, Any]) -> FlowRecord:
    """The inverse of :func:`record_summary`, given the flow's exchange."""
    place: dict[str, Any] = {name: summary.get(name) for name in DESTINATION_FIELDS}
    place["watched"] = bool(place["watched"])  # absent in summaries of older versions
    return FlowRecord(
        exchange=exchange,
        **place,
        findings=[FindingRecord(**finding) for finding in summary.get("findings", [])],
        analysis_error=summary.get("analysis_error"),
        truncated=bool(summary.get("truncated")),
        policy_sha256=summary.get("policy_sha256"),
        action=summary.get("action") or "log",
        action_rule=summary.get("action_rule"),
        enforced=bool(summary.get("enforced")),
    )
