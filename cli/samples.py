"""Samples for ``leakmap policy test``: one payload or capture, run through a policy.

A sample is a mitmproxy flow file, a HAR file, one HAR entry (a JSON object
with ``request``), a JSON document, or any other raw body.  Raw bodies and
JSON documents become one request to ``--url``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leakmap.addons.review import destination
from leakmap.core.classify import Classifier
from leakmap.core.decode import Limits
from leakmap.core.device import load_device
from leakmap.core.exchange import Exchange, split_url
from leakmap.core.known import KnownMatcher
from leakmap.core.pipeline import FlowRecord, Pipeline
from leakmap.core.redact import printable
from leakmap.geodb.lookup import GeoResolver
from leakmap.policies.model import load_policy
from leakmap.wiring import build_locator

_MAX_SAMPLE = 256 * 2**20  # a sample is read whole; a bigger one is a capture for analyze
DETECTORS = {"pattern": "pattern", "key": "keys", "known": "known"}  # finding match -> policy key


def build(policy_file: Path, device: str, geoip_dir: str, networks: str,
          show_values: bool) -> tuple[Pipeline, GeoResolver]:
    """The live pipeline for ``policy_file``, without a store: a throwaway hash key, no cache
    written, no time budget (the same sample always gives the same answer)."""
    policy = load_policy(policy_file)
    profile = load_device(device or None)
    resolver, _entities, locator = build_locator(policy, geoip_dir, networks)
    known = KnownMatcher(list(policy.data_types.values()), profile)
    classifier = Classifier(policy, profile, Limits(budget_ms=0), known)
    return Pipeline(classifier, locator, os.urandom(32), store_raw=show_values), resolver


@dataclass(frozen=True)
class RawRequest:
    """How a raw body or JSON document is sent."""

    content_type: str | None
    url: str
    server_ip: str | None
    method: str
    headers: tuple[str, ...]

    def exchange(self, body: bytes, name: str) -> Exchange:
        parts = split_url(self.url)
        kind = self.content_type or mimetypes.guess_type(name)[0]
        headers = [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in self.headers)]
        if kind and not any(n.lower() == "content-type" for n, _ in headers):
            headers.insert(0, ("content-type", kind))
        return Exchange(flow_id="sample", kind="http", timestamp=time.time(), host=parts.hostname,
                        scheme=parts.scheme or "https", method=self.method.upper(), url=self.url,
                        path=parts.path or "/", server_ip=self.server_ip, server_port=parts.port
                        or (80 if parts.scheme == "http" else 443), http_version="HTTP/1.1",
                        request_headers=headers, request_body=body)


def read_sample(path: Path, raw: RawRequest, entries: set[int]) -> list[Exchange]:
    """The exchanges of ``path`` (``-``: standard input), only ``entries`` (from 1) if given."""
    body = _read(path)
    found = list(_exchanges(path, body, raw))
    if entries:
        missing = sorted(n for n in entries if not 1 <= n <= len(found))
        if missing:
            raise ValueError(f"{path}: no entry {missing[0]} (the sample has {len(found)})")
        found = [exchange for number, exchange in enumerate(found, 1) if number in entries]
    return found


def _read(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read(_MAX_SAMPLE + 1)[:_MAX_SAMPLE]
    if path.stat().st_size > _MAX_SAMPLE:
        raise ValueError(f"{path}: larger than {_MAX_SAMPLE >> 20} MB (use leakmap analyze for "
                         "captures)")
    return path.read_bytes()


def _exchanges(path: Path, body: bytes, raw: RawRequest) -> Iterator[Exchange]:
    document = _json(body)
    if isinstance(document, dict) and isinstance(document.get("log"), dict):  # a HAR file
        from leakmap.core.har import read_har

        yield from read_har(path)
        return
    if isinstance(document, dict) and isinstance(document.get("request"), dict):  # one entry
        from leakmap.core.har import exchange_from_entry

        yield exchange_from_entry(document, "sample")
        return
    if document is None and body[:1].isdigit() and str(path) != "-":  # a mitmproxy flow file?
        flows = _flow_file(path)
        if flows is not None:
            yield from flows
            return
    name = "sample.json" if document is not None else str(path)
    yield raw.exchange(body, name)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _flow_file(path: Path) -> list[Exchange] | None:
    from leakmap.addons.flows import read_flow_file

    try:
        return list(read_flow_file(path))
    except ValueError:  # not a flow file after all: a raw body that starts with a digit
        return None


# --------------------------------------------------------------------------
# Output


def rule_fired(data_type: str, match: str) -> str:
    """The policy entry behind a finding: ``data_types.imei.pattern``."""
    return f"data_types.{data_type}.{DETECTORS.get(match, match)}"


def as_data(record: FlowRecord, show_values: bool) -> dict[str, Any]:
    exchange = record.exchange
    return {
        "flow_id": exchange.flow_id, "method": exchange.method, "url": exchange.url,
        "host": exchange.host, "server_ip": exchange.server_ip, "country": record.country,
        "operator": record.operator, "operator_country": record.operator_country,
        "watched": record.watched, "watch_reason": record.watch_reason,
        "action": record.action, "action_rule": record.action_rule,
        "policy_sha256": record.policy_sha256, "analysis_error": record.analysis_error,
        "findings": [{
            "field": f.field, "data_type": f.data_type, "category": f.category,
            "severity": f.severity, "encoding": f.encoding, "match": f.match,
            "rule": rule_fired(f.data_type, f.match), "action": f.action,
            "value": f.raw_value if show_values else f.preview,
        } for f in record.findings],
    }


def as_text(records: Iterable[FlowRecord], show_values: bool) -> str:
    lines: list[str] = []
    for number, record in enumerate(records, 1):
        exchange = record.exchange
        target = exchange.url or exchange.host or exchange.sni or "?"
        lines.append(f"flow {number}: {exchange.method or exchange.kind} {target}")
        lines.append(f"  to {exchange.server_ip or '-'}: {destination(record)}")
        if record.action != "log":
            lines.append(f"  action: {record.action.upper()} by {record.action_rule}")
        if record.analysis_error:
            lines.append(f"  analysis: {record.analysis_error}")
        lines += _finding_lines(record, show_values) or ["  no findings"]
    # a captured sample's host, keys and values may hold escape sequences or line breaks
    return "\n".join(map(printable, lines)) if lines else "the sample holds no flows"


def _finding_lines(record: FlowRecord, show_values: bool) -> list[str]:
    rows = [(f.data_type, f"{f.severity}", f.field, f.encoding, rule_fired(f.data_type, f.match),
             (f.raw_value or "") if show_values else f.preview, f.action)
            for f in record.findings]
    if not rows:
        return []
    header = ("data type", "severity", "field", "encoding", "rule", "value", "action")
    widths = [min(48, max(len(str(row[i])) for row in [header, *rows])) for i in range(len(header))]
    return ["  " + "  ".join(str(cell)[:48].ljust(width) for cell, width in zip(row, widths,
                                                                              strict=True)).rstrip()
            for row in [header, *rows]]
