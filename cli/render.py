"""Report formats: the same rows as a terminal table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from leakmap.core.redact import printable
from leakmap.store.queries import FINDING_KEYS

Rows = list[dict[str, Any]]

TABLE_COLUMNS = (
    ("timestamp", "time", 20),
    ("watch_mark", "!", 1),
    ("host", "host", 28),
    ("country", "cc", 2),
    ("operator_label", "operator", 18),
    ("data_type", "data type", 14),
    ("field", "field", 40),
    ("encoding", "encoding", 14),
    ("match", "match", 7),
    ("severity", "severity", 8),
    ("preview", "value", 18),
)


def as_json(findings: Rows, flows: Rows) -> str:
    return json.dumps({"findings": findings, "flows": flows}, indent=2, ensure_ascii=False) + "\n"


def as_csv(findings: Rows, flows: Rows) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FINDING_KEYS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(findings)
    return buffer.getvalue()


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else printable(str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def table_lines(rows: Rows, columns: Sequence[tuple[str, str, int]]) -> list[str]:
    widths = [
        min(limit, max([len(title)] + [len(_cell(r.get(key), limit)) for r in rows]))
        for key, title, limit in columns
    ]
    lines = ["  ".join(title.ljust(w) for (_, title, _), w in zip(columns, widths, strict=True))]
    for row in rows:
        cells = [_cell(row.get(key), w) for (key, _, _), w in zip(columns, widths, strict=True)]
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)))
    return lines


def _summary(findings: Rows, flows: Rows) -> list[str]:
    countries = Counter(f["country"] or "??" for f in findings)
    operators = Counter(_operator_label(f) or "unknown" for f in findings)
    types = Counter(f["data_type"] for f in findings)
    flagged = sum(1 for f in flows if f["finding_count"])
    watched = [f for f in flows if f.get("watched")]
    lines = [f"{len(flows)} flows logged, {flagged} with findings, {len(findings)} findings; "
             f"{len(watched)} flows to watched destinations "
             f"({sum(1 for f in findings if f.get('watched'))} findings)"]
    acted = Counter(f.get("action") for f in flows if f.get("action") not in (None, "log"))
    if acted:
        enforced = sum(1 for f in flows if f.get("enforced"))
        lines.append("actions:      " + ", ".join(f"{a} {n}" for a, n in acted.most_common()) +
                     f" ({enforced} enforced by the proxy)")
    lines += _watched_lines(findings, flows)
    if findings:
        lines.append("by country:   " + ", ".join(f"{c} {n}" for c, n in countries.most_common()))
        lines.append("by operator:  " + ", ".join(f"{o} {n}" for o, n in operators.most_common()))
        lines.append("by data type: " + ", ".join(f"{t} {n}" for t, n in types.most_common()))
    return lines


def _watched_lines(findings: Rows, flows: Rows) -> list[str]:
    """One line per watched destination: what went there, where it is, whose it is, why."""
    types_by_flow: dict[tuple[str, str], list[str]] = {}
    for row in findings:
        types_by_flow.setdefault((row["run"], row["flow_id"]), []).append(row["data_type"])
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for row in flows:
        if row.get("watched"):
            key = (row.get("host") or row.get("server_ip") or "?", row.get("destination") or "",
                   row.get("watch_reason") or "")
            grouped.setdefault(key, []).extend(types_by_flow.get((row["run"], row["flow_id"]), []))
    return [
        printable(f"WATCHED {', '.join(dict.fromkeys(types)) or 'no findings'} -> {host}: {place} "
                  f"[{reason}]")
        for (host, place, reason), types in grouped.items()
    ]


def _operator_label(row: dict[str, Any]) -> str | None:
    if not row.get("operator"):
        return None
    return f"{row['operator']} ({row.get('operator_country') or '?'})"


def as_table(findings: Rows, flows: Rows) -> str:
    shown = [{**f, "timestamp": (f["timestamp"] or "")[:19].replace("T", " "),
              "watch_mark": "!" if f.get("watched") else "",
              "operator_label": _operator_label(f)} for f in findings]
    lines = [*_summary(findings, flows), ""]
    columns = TABLE_COLUMNS + ((("step", "step", 20),) if any(f.get("step") for f in findings) else ())
    lines += table_lines(shown, columns) if findings else ["no findings"]
    return "\n".join(lines) + "\n"


def runs_table(runs: Rows) -> str:
    columns = (("run", "run", 40), ("command", "command", 8), ("status", "status", 10),
               ("started_at", "started", 27), ("ended_at", "ended", 27),
               ("policy", "policy", 20), ("flows", "flows", 7), ("flagged", "flagged", 7),
               ("findings", "findings", 8), ("watched", "watched", 7), ("blocked", "blocked", 7),
               ("redacted", "redacted", 8))
    return "\n".join(table_lines(runs, columns)) if runs else "no runs"


FORMATS: dict[str, Callable[[Rows, Rows], str]] = {
    "table": as_table,
    "json": as_json,
    "csv": as_csv,
}
