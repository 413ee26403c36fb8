"""Read-side queries: findings and flows as plain dicts for reports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, case, func, select
from sqlalchemy.orm import Session

from leakmap.store.schema import Finding, Flow, Run, Step

DESTINATION_KEYS = (
    "country", "city", "asn", "as_org", "operator", "operator_country", "attribution",
    "watched", "watch_reason", "domain", "geo_ip", "geo_ip_source", "destination",
)
FINDING_KEYS = (
    "flow_id", "run", "timestamp", "host", "url", "server_ip", "server_port",
    *DESTINATION_KEYS, "data_type", "category", "field", "encoding", "match",
    "severity", "preview", "value_hash",
    # the finding's own action; the flow's is flow_action (with action_rule and enforced)
    "action", "flow_action", "action_rule", "enforced", "policy_sha256",
    "step",  # the scenario step during which the flow happened (leakmap run --scenario)
)
FLOW_KEYS = (
    "flow_id", "run", "timestamp", "kind", "client_ip", "host", "sni", "method", "url", "http_version",
    "status_code", "server_ip", "server_port", *DESTINATION_KEYS,
    "geo_scope", "request_size", "response_size", "finding_count", "flow_error", "analysis_error",
    "action", "action_rule", "enforced", "policy_sha256", "step",
)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="microseconds") + "Z"


def _filtered(query: Select[Any], run: str | None, countries: Sequence[str],
              watched: bool = False) -> Select[Any]:
    if run is not None:
        query = query.where(Run.name == run)
    if countries:
        query = query.where(Flow.country.in_([c.upper() for c in countries]))
    if watched:
        query = query.where(Flow.watched.is_(True))
    return query


def describe_destination(values: dict[str, Any]) -> str:
    """``server in SG (AS16509 Amazon.com, Inc.), operated by Xiaomi (CN)``."""
    scope = values.get("geo_scope") or "unknown"
    article = "an" if scope[0] in "aeiou" else "a"
    place = values.get("country") or (
        "an unknown country" if scope == "public" else f"{article} {scope} network")
    if values.get("city"):
        place = f"{values['city']}, {place}"
    network = ""
    if values.get("asn") is not None:
        network = f" (AS{values['asn']}" + (f" {values['as_org']})" if values.get("as_org") else ")")
    if values.get("operator"):
        who = f"operated by {values['operator']} ({values.get('operator_country') or '?'})"
    else:
        who = "operator unknown"
    return f"server in {place}{network}, {who}"


StepTimes = dict[int, list[tuple[datetime, datetime | None, str]]]  # run id -> (start, end, label)


def _steps(session: Session) -> StepTimes:
    """Every run's started steps, in order, for placing flows in them."""
    found: StepTimes = {}
    query = select(Step).where(Step.started_at.is_not(None)).order_by(Step.run_id, Step.number)
    for step in session.scalars(query):
        assert step.started_at is not None
        found.setdefault(step.run_id, []).append((step.started_at, step.ended_at,
                                                  f"{step.number} {step.name}"))
    return found


def step_at(steps: list[tuple[datetime, datetime | None, str]], moment: datetime | None) -> str | None:
    """The step during which ``moment`` fell: started at or before it, not yet ended."""
    if moment is None:
        return None
    for started, ended, label in steps:
        if started <= moment and (ended is None or moment < ended):
            return label
    return None


def steps(engine: Engine, run: str) -> list[dict[str, Any]]:
    """A run's scenario steps, in order, with their times (None: not reached)."""
    with Session(engine) as session:
        query = select(Step).join(Run, Step.run_id == Run.id).where(Run.name == run).order_by(Step.number)
        return [{"number": s.number, "name": s.name, "instruction": s.instruction,
                 "started_at": iso(s.started_at), "ended_at": iso(s.ended_at)}
                for s in session.scalars(query)]


def run_id(engine: Engine, name: str) -> int | None:
    with Session(engine) as session:
        return session.scalar(select(Run.id).where(Run.name == name))


def _flow_fields(flow: Flow, run_name: str, steps: StepTimes | None = None) -> dict[str, Any]:
    values = {key: getattr(flow, key, None) for key in FLOW_KEYS if hasattr(flow, key)}
    values["step"] = step_at((steps or {}).get(flow.run_id, []), flow.timestamp)
    values["run"] = run_name
    values["timestamp"] = iso(flow.timestamp)
    values["watched"] = bool(flow.watched)
    values["enforced"] = bool(flow.enforced)
    values["flow_action"] = flow.action
    values["destination"] = describe_destination(values)
    return values


def findings(engine: Engine, run: str | None = None, countries: Sequence[str] = (),
             watched: bool = False) -> list[dict]:
    query = (
        select(Finding, Flow, Run.name)
        .join(Flow, Finding.flow_pk == Flow.id)
        .join(Run, Flow.run_id == Run.id)
        .order_by(Flow.timestamp, Flow.flow_id, Finding.field, Finding.data_type)
    )
    rows = []
    with Session(engine) as session:
        steps = _steps(session)
        for finding, flow, run_name in session.execute(_filtered(query, run, countries, watched)):
            row = _flow_fields(flow, run_name, steps)
            row.update(
                data_type=finding.data_type,
                category=finding.category,
                field=finding.field,
                encoding=finding.encoding,
                match=finding.match,
                severity=finding.severity,
                preview=finding.preview,
                value_hash=finding.value_hash,
                action=finding.action,
            )
            if finding.raw_value is not None:
                row["raw_value"] = finding.raw_value
            rows.append({key: row.get(key) for key in (*FINDING_KEYS, "raw_value") if key in row})
    return rows


def flows(engine: Engine, run: str | None = None, countries: Sequence[str] = (),
          watched: bool = False) -> list[dict]:
    query = (
        select(Flow, Run.name)
        .join(Run, Flow.run_id == Run.id)
        .order_by(Flow.timestamp, Flow.flow_id)
    )
    with Session(engine) as session:
        steps = _steps(session)
        return [
            {key: row[key] for key in FLOW_KEYS}
            for row in (
                _flow_fields(flow, run_name, steps)
                for flow, run_name in session.execute(_filtered(query, run, countries, watched))
            )
        ]


def runs(engine: Engine) -> list[dict]:
    """Every run with what it holds: flows, flows with findings, findings, watched flows,
    and the flows its policy blocked or redacted."""
    flow_counts = (
        select(Flow.run_id,
               func.count(Flow.id).label("flows"),
               func.sum(case((Flow.finding_count > 0, 1), else_=0)).label("flagged"),
               func.sum(Flow.finding_count).label("findings"),
               func.sum(case((Flow.watched, 1), else_=0)).label("watched"),
               func.sum(case((Flow.action == "block", 1), else_=0)).label("blocked"),
               func.sum(case((Flow.action == "redact", 1), else_=0)).label("redacted"))
        .group_by(Flow.run_id).subquery()
    )
    query = select(Run, flow_counts).outerjoin(flow_counts, flow_counts.c.run_id == Run.id).order_by(Run.id)
    with Session(engine) as session:
        return [
            {
                "run": run.name,
                "command": run.command,
                "status": run.status,
                "started_at": iso(run.started_at),
                "ended_at": iso(run.ended_at),
                "tool_version": run.tool_version,
                "mode": run.mode,
                "policy": run.policy_name,
                "policy_sha256": run.policy_sha256,
                "device_sha256": run.device_sha256,
                "device": run.device,
                "captures": json.loads(run.captures) if run.captures else [],
                "settings": json.loads(run.settings) if run.settings else {},
                "store_raw": bool(run.store_raw),
                "geodb": json.loads(run.geodb) if run.geodb else None,
                **{key: int(getattr(row, key) or 0) for key in _RUN_COUNTS},
            }
            for row in session.execute(query)
            for run in (row.Run,)
        ]


_RUN_COUNTS = ("flows", "flagged", "findings", "watched", "blocked", "redacted")


def run_exists(engine: Engine, name: str) -> bool:
    with Session(engine) as session:
        return session.scalar(select(Run.id).where(Run.name == name)) is not None
