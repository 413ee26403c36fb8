"""Flagged flows as a HAR 1.2 file: evidence that other tools (browsers, HAR viewers) open.

The request is taken whole from the run's capture when the capture is still
where the run recorded it and its SHA-256 still matches; otherwise the entry
holds what the database keeps (method, URL, status, server address, time)
and says so in its ``comment``.  leakmap's view of the flow (destination,
action, findings with masked values) goes in a ``_leakmap`` field, which HAR
readers ignore.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl

from leakmap.core.exchange import Exchange, iso_utc, split_url

_LEAKMAP_KEYS = ("run", "flow_id", "host", "server_ip", "country", "city", "asn", "as_org", "operator",
                 "operator_country", "watched", "watch_reason", "action", "action_rule", "enforced",
                 "policy_sha256", "flow_error", "analysis_error")
_FINDING_KEYS = ("data_type", "category", "severity", "field", "encoding", "match", "preview",
                 "action")


def har_document(entries: list[dict[str, Any]], version: str) -> dict[str, Any]:
    return {"log": {"version": "1.2", "creator": {"name": "leakmap", "version": version},
                    "entries": entries}}


def entry(flow: dict[str, Any], findings: Sequence[dict[str, Any]], sent: Exchange | None) -> dict[str, Any]:
    """One HAR entry for a stored ``flow`` and its ``findings``; ``sent`` is the flow as
    the capture holds it, when it could be read."""
    url = (sent.url if sent else None) or flow.get("url") or ""
    request: dict[str, Any] = {
        "method": (sent.method if sent else None) or flow.get("method") or "GET",
        "url": url,
        "httpVersion": (sent.http_version if sent else None) or flow.get("http_version") or "",
        "headers": _headers(sent.request_headers if sent else ()),
        "queryString": _query(url),
        "cookies": [],
        "headersSize": -1,
        "bodySize": len(sent.request_body) if sent else flow.get("request_size") or 0,
    }
    if sent and sent.request_body:
        request["postData"] = _post_data(sent)
    status = flow.get("status_code") or 0
    return {
        "startedDateTime": flow.get("timestamp") or iso_utc(sent.timestamp if sent else 0.0),
        "time": 0,
        "request": request,
        "response": {"status": status, "statusText": "", "httpVersion": request["httpVersion"],
                     "headers": _headers(sent.response_headers if sent else ()), "cookies": [],
                     "content": {"size": flow.get("response_size") or 0, "mimeType": ""},
                     "redirectURL": "", "headersSize": -1, "bodySize": -1},
        "cache": {},
        "timings": {"send": 0, "wait": 0, "receive": 0},
        "serverIPAddress": flow.get("server_ip") or "",
        "comment": ("request as captured" if sent else
                    "from the leakmap database only: the capture was not available"),
        "_leakmap": {**{key: flow.get(key) for key in _LEAKMAP_KEYS},
                     "findings": [{key: f.get(key) for key in _FINDING_KEYS} for f in findings]},
    }


def _headers(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def _query(url: str) -> list[dict[str, str]]:
    try:
        query = split_url(url).query
    except ValueError:
        return []
    return [{"name": name, "value": value} for name, value in parse_qsl(query, keep_blank_values=True)]


def _post_data(sent: Exchange) -> dict[str, Any]:
    mime = sent.header("content-type") or "application/octet-stream"
    try:
        return {"mimeType": mime, "text": sent.request_body.decode("utf-8")}
    except UnicodeDecodeError:  # binary, or still compressed: HAR 1.2's base64 form
        return {"mimeType": mime, "text": base64.b64encode(sent.request_body).decode(),
                "encoding": "base64"}
