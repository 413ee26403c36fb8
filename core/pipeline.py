"""One flow in, one record out: classification, geolocation and redaction.

:class:`Pipeline` is the single function behind the live addon and ``leakmap
analyze``.  Its output, :class:`FlowRecord`, is what the store writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from leakmap.core.classify import Analysis, Classifier, Finding
from leakmap.core.exchange import Exchange
from leakmap.core.redact import keyed_hash, mask


class GeoLike(Protocol):
    scope: str
    country: str | None
    city: str | None
    asn: int | None
    as_org: str | None


class Resolver(Protocol):
    def lookup(self, ip: str | None) -> GeoLike: ...


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


@dataclass
class FlowRecord:
    exchange: Exchange
    geo_scope: str | None
    country: str | None
    city: str | None
    asn: int | None
    as_org: str | None
    findings: list[FindingRecord] = field(default_factory=list)
    analysis_error: str | None = None
    truncated: bool = False


@dataclass
class Pipeline:
    classifier: Classifier
    resolver: Resolver
    hash_key: bytes
    store_raw: bool = False

    def process(self, exchange: Exchange) -> FlowRecord:
        """Classify, locate and redact one flow.  Never raises on flow content."""
        try:
            analysis = self.classifier.classify(exchange)
        except Exception as e:  # the record must exist even if analysis breaks
            analysis = Analysis(errors=[f"analysis failed: {type(e).__name__}: {e}"])
        geo = self.resolver.lookup(exchange.server_ip)
        return FlowRecord(
            exchange=exchange,
            geo_scope=geo.scope,
            country=geo.country,
            city=geo.city,
            asn=geo.asn,
            as_org=geo.as_org,
            findings=[self._redact(finding) for finding in analysis.findings],
            analysis_error="; ".join(analysis.errors) or None,
            truncated=analysis.truncated,
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


def record_summary(record: FlowRecord) -> dict[str, Any]:
    """``record`` without its exchange, as plain data (mitmproxy flow metadata)."""
    return {
        "geo_scope": record.geo_scope,
        "country": record.country,
        "city": record.city,
        "asn": record.asn,
        "as_org": record.as_org,
        "analysis_error": record.analysis_error,
        "truncated": record.truncated,
        "findings": [asdict(finding) for finding in record.findings],
    }


def record_from_summary(exchange: Exchange, summary: dict[str, Any]) -> FlowRecord:
    """The inverse of :func:`record_summary`, given the flow's exchange."""
    return FlowRecord(
        exchange=exchange,
        geo_scope=summary.get("geo_scope"),
        country=summary.get("country"),
        city=summary.get("city"),
        asn=summary.get("asn"),
        as_org=summary.get("as_org"),
        findings=[FindingRecord(**finding) for finding in summary.get("findings", [])],
        analysis_error=summary.get("analysis_error"),
        truncated=bool(summary.get("truncated")),
    )
