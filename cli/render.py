"""Report formats: the same rows as a terminal table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from leakmap.store.queries import FINDING_KEYS

Rows = list[dict[str, Any]]

TABLE_COLUMNS = (
    ("timestamp", "time", 20),
    ("host", "host", 28),
    ("country", "cc", 2),
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
    text = "" if value is None else "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(rows: Rows, columns: Sequence[tuple[str, str, int]]) -> list[str]:
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
    types = Counter(f["data_type"] for f in findings)
    flagged = sum(1 for f in flows if f["finding_count"])
    lines = [f"{len(flows)} flows logged, {flagged} with findings, {len(findings)} findings"]
    if findings:
        lines.append("by country:   " + ", ".join(f"{c} {n}" for c, n in countries.most_common()))
        lines.append("by data type: " + ", ".join(f"{t} {n}" for t, n in types.most_common()))
    return lines


def as_table(findings: Rows, flows: Rows) -> str:
    shown = [{**f, "timestamp": (f["timestamp"] or "")[:19].replace("T", " ")} for f in findings]
    lines = [*_summary(findings, flows), ""]
    lines += _table(shown, TABLE_COLUMNS) if findings else ["no findings"]
    return "\n".join(lines) + "\n"


def runs_table(runs: Rows) -> str:
    columns = (("run", "run", 40), ("command", "command", 8), ("status", "status", 10),
               ("started_at", "started", 27), ("ended_at", "ended", 27),
               ("policy", "policy", 20))
    return "\n".join(_table(runs, columns)) if runs else "no runs"


FORMATS: dict[str, Callable[[Rows, Rows], str]] = {
    "table": as_table,
    "json": as_json,
    "csv": as_csv,
}
