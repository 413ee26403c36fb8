"""Charts as inline SVG: no script, no fonts, no tiles, so a report opens offline.

Every text that came from captured traffic goes through :func:`esc`.  Each
chart gives its marks a class (``mark``) and data attributes, so that tests
and readers can count them: one bar per destination country, one cell per
(destination, data type), one dot per finding on the timeline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

WATCHED_COLOUR = "#c62828"
PLAIN_COLOUR = "#546e7a"
FONT = "font-family:system-ui,sans-serif;font-size:12px"
_MAX_DOTS = 3000  # timeline dots drawn one by one; more are binned


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


@dataclass(frozen=True)
class Bar:
    label: str
    key: str  # the country code, for data-country
    flows: int
    findings: int
    watched: bool


def country_bars(flows: Sequence[dict[str, Any]]) -> list[Bar]:
    """One bar per destination country: its flows and findings; watched ones first."""
    counts: Counter[str] = Counter()
    found: Counter[str] = Counter()
    watched: set[str] = set()
    for flow in flows:
        country = flow.get("country") or "??"
        counts[country] += 1
        found[country] += flow.get("finding_count") or 0
        if flow.get("watched"):
            watched.add(country)
    order = sorted(counts, key=lambda c: (c not in watched, -found[c], -counts[c], c))
    return [Bar("unknown" if c == "??" else c, c, counts[c], found[c], c in watched) for c in order]


def country_chart(bars: Sequence[Bar]) -> str:
    """Horizontal bars: flows (light) and findings (dark) per destination country."""
    if not bars:
        return '<p class="empty">No flows.</p>'
    row, left, width = 26, 70, 420
    most = max(max(b.flows, b.findings) for b in bars) or 1
    parts = [f'<svg id="country-chart" role="img" aria-label="Destinations by country" '
             f'xmlns="http://www.w3.org/2000/svg" width="{left + width + 160}" '
             f'height="{row * len(bars) + 10}" style="{FONT}">']
    for index, bar in enumerate(bars):
        y = 5 + index * row
        colour = WATCHED_COLOUR if bar.watched else PLAIN_COLOUR
        flows_w = max(2, round(width * bar.flows / most))
        found_w = round(width * bar.findings / most)
        parts.append(
            f'<g class="mark country" data-country="{esc(bar.key)}" data-watched="{int(bar.watched)}">'
            f'<title>{esc(bar.label)}: {bar.flows} flows, {bar.findings} findings'
            f'{" (watched)" if bar.watched else ""}</title>'
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{esc(bar.label)}</text>'
            f'<rect x="{left}" y="{y}" width="{flows_w}" height="20" fill="{colour}" opacity="0.3"/>'
            f'<rect x="{left}" y="{y + 5}" width="{found_w}" height="10" fill="{colour}"/>'
            f'<text x="{left + max(flows_w, found_w) + 6}" y="{y + 15}">{bar.flows} flows, '
            f'{bar.findings} findings</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def type_matrix(findings: Sequence[dict[str, Any]], destinations: Sequence[tuple[str, str, bool]]) -> str:
    """A grid of destinations (rows) by data types (columns); a dot's area is the count."""
    types = sorted({f["data_type"] for f in findings})
    if not types or not destinations:
        return '<p class="empty">No findings.</p>'
    counts = Counter((destination_key(f), f["data_type"]) for f in findings)
    most = max(counts.values())
    cell, left, top = 34, 300, 120
    parts = [f'<svg id="types-chart" role="img" aria-label="Data types per destination" '
             f'xmlns="http://www.w3.org/2000/svg" width="{left + cell * len(types) + 90}" '
             f'height="{top + cell * len(destinations) + 10}" style="{FONT}">']
    for column, name in enumerate(types):
        x = left + column * cell + cell // 2
        parts.append(f'<text transform="translate({x},{top - 8}) rotate(-50)">{esc(name)}</text>')
    for line, (key, label, watched) in enumerate(destinations):
        y = top + line * cell + cell // 2
        parts.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{esc(label[:48])}</text>')
        for column, name in enumerate(types):
            count = counts.get((key, name), 0)
            if count:
                radius = 4 + 11 * (count / most) ** 0.5
                x = left + column * cell + cell // 2
                parts.append(
                    f'<circle class="mark cell" data-type="{esc(name)}" cx="{x}"'
                    f' cy="{y}" r="{radius:.1f}" fill="{WATCHED_COLOUR if watched else PLAIN_COLOUR}">'
                    f'<title>{esc(name)} to {esc(label)}: {count}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)


def destination_key(row: dict[str, Any]) -> str:
    return f"{row.get('host') or row.get('server_ip') or '?'}\x00{row.get('country') or '??'}"


def timeline(findings: Sequence[dict[str, Any]]) -> str:
    """Findings over time, one row per data type; dots binned when there are very many."""
    times = [(moment, f) for f in findings if (moment := _moment(f.get("timestamp"))) is not None]
    if not times:
        return '<p class="empty">No findings.</p>'
    types = sorted({f["data_type"] for _, f in times})
    start, end = min(t for t, _ in times), max(t for t, _ in times)
    span = (end - start).total_seconds() or 1.0
    row, left, width = 22, 130, 640
    parts = [f'<svg id="timeline" role="img" aria-label="Findings over time" '
             f'xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
             f'height="{row * len(types) + 40}" style="{FONT}">']
    for index, name in enumerate(types):
        parts.append(f'<text x="{left - 8}" y="{14 + index * row}" text-anchor="end">{esc(name)}</text>')
    dots: Counter[tuple[int, int, bool]] = Counter()
    bins = width if len(times) > _MAX_DOTS else None
    for moment, finding in times:
        x = (moment - start).total_seconds() / span * width
        dots[(round(x if bins is None else int(x)), types.index(finding["data_type"]),
              bool(finding.get("watched")))] += 1
    for (x, line, watched), count in sorted(dots.items()):
        parts.append(f'<circle class="mark dot" cx="{left + x}" cy="{10 + line * row}" r="4" '
                     f'fill="{WATCHED_COLOUR if watched else PLAIN_COLOUR}" opacity="0.75">'
                     f'<title>{esc(types[line])}: {count}</title></circle>')
    axis_y = row * len(types) + 20
    parts.append(f'<text x="{left}" y="{axis_y}">{esc(_label(start))}</text>'
                 f'<text x="{left + width}" y="{axis_y}" text-anchor="end">{esc(_label(end))}</text>'
                 "</svg>")
    return "".join(parts)


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _label(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
