"""The evidence report: one self-contained HTML file a lab can hand over.

Everything is in the file: styles, charts (inline SVG, ``reports/svg.py``) and
a small script that sorts and filters the evidence table.  Its Content
Security Policy allows nothing to load and no script but that one (by hash),
so the page opens offline, and a ``<script>`` that slipped through escaping
still would not run.  Every value from captured traffic is escaped.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from leakmap.reports import svg
from leakmap.reports.svg import esc

Rows = Sequence[dict[str, Any]]

EVIDENCE_COLUMNS = (
    ("timestamp", "time"), ("host", "host"), ("server_ip", "server IP"), ("country", "country"),
    ("city", "city"), ("asn", "ASN"), ("operator_label", "operator"), ("data_type", "data type"),
    ("field", "field path"), ("encoding", "encoding"), ("preview", "masked value"),
    ("severity", "severity"), ("flow_action", "action"), ("step", "step"),
)

PAGE_ROWS = 200  # evidence rows laid out at once: a 13,000-row table would take seconds to open

_SCRIPT = """
(function () {
  var PAGE = __PAGE__;
  var table = document.getElementById('evidence-table');
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
  var filter = document.getElementById('filter');
  var watchedOnly = document.getElementById('watched-only');
  var shown = document.getElementById('shown');
  var where = document.getElementById('page');
  var matches = [], page = 0;
  function draw() {
    var first = page * PAGE, last = Math.min(matches.length, first + PAGE);
    rows.forEach(function (row) { row.hidden = true; });
    for (var i = first; i < last; i += 1) { matches[i].hidden = false; }
    shown.textContent = String(matches.length);
    where.textContent = matches.length ? 'rows ' + (first + 1) + '\u2013' + last : 'no rows';
  }
  function apply() {
    var words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    matches = rows.filter(function (row) {
      var text = texts[row.rowIndexInData];
      return words.every(function (w) { return text.indexOf(w) >= 0; }) &&
             (!watchedOnly.checked || row.getAttribute('data-watched') === '1');
    });
    page = 0;
    draw();
  }
  rows.forEach(function (row, index) { row.rowIndexInData = index; });
  document.getElementById('prev').addEventListener('click', function () {
    if (page > 0) { page -= 1; draw(); }
  });
  document.getElementById('next').addEventListener('click', function () {
    if ((page + 1) * PAGE < matches.length) { page += 1; draw(); }
  });
  filter.addEventListener('input', apply);
  watchedOnly.addEventListener('change', apply);
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell, index) {
    cell.addEventListener('click', function () {
      var up = cell.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
        c.removeAttribute('aria-sort');
      });
      cell.setAttribute('aria-sort', up ? 'ascending' : 'descending');
      var numeric = cell.getAttribute('data-numeric') === '1';
      var keys = rows.map(function (row) { return row.cells[index].textContent; });
      var order = rows.map(function (row, i) { return i; });
      order.sort(function (a, b) {
        var x = keys[a], y = keys[b];
        var c = numeric ? (Number(x) || 0) - (Number(y) || 0) : (x < y ? -1 : x > y ? 1 : 0);
        return up ? c : -c;
      });
      var fragment = document.createDocumentFragment();
      rows = order.map(function (i) { return rows[i]; });
      rows.forEach(function (row) { fragment.appendChild(row); });
      body.appendChild(fragment);
      apply();
    });
  });
  apply();
})();
""".replace("__PAGE__", str(PAGE_ROWS))

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse} td,th{padding:3px 8px;text-align:left;vertical-align:top}
table.meta th{color:#555;font-weight:normal;white-space:nowrap}
#evidence-table{font-size:12px;width:100%}
#evidence-table th{cursor:pointer;background:#eee;position:sticky;top:0}
#evidence-table th[aria-sort=ascending]::after{content:" \\25B2"}
#evidence-table th[aria-sort=descending]::after{content:" \\25BC"}
#evidence-table tr[data-watched="1"] td{background:#fdecea}
#evidence-table tbody tr:nth-child(even) td{border-bottom:1px solid #eee}
.watched{color:#c62828;font-weight:bold} .lead{font-size:1.15em} code{font-size:.95em}
.controls{margin:.6em 0} .empty{color:#777} .note{color:#555;font-size:.9em}
"""


def render(findings: Rows, flows: Rows, runs: Rows, tool_version: str, title: str) -> str:
    """The whole report as one HTML document."""
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    policy = (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
              f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'")
    shown = [_evidence_row(f) for f in findings]
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        _header(flows, runs, tool_version),
        _summary(findings, flows),
        _by_step(findings, flows),
        _charts(findings, flows),
        _evidence(shown),
        f"<script>{_SCRIPT}</script></body></html>\n",
    ])


# --------------------------------------------------------------------------
# What the report covers


def _header(flows: Rows, runs: Rows, tool_version: str) -> str:
    times = sorted(f["timestamp"] for f in flows if f.get("timestamp"))
    span = f"{times[0]} to {times[-1]}" if times else "no flows"
    rows = [("report made", f"{datetime.now(tz=UTC).isoformat(timespec='seconds')} by leakmap "
                            f"{tool_version}"),
            ("time span of the flows", span)]
    for run in runs:
        rows += _run_rows(run)
    cells = "".join(f"<tr><th>{esc(name)}</th><td>{value}</td></tr>" for name, value in
                    ((n, v if n == "captures" else esc(v)) for n, v in rows))
    return f'<section id="meta"><table class="meta">{cells}</table></section>'


def _run_rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    name = f"{run['run']} ({run['command']}, {run['status']}, {run.get('mode') or '-'})"
    rows = [("run", name),
            ("started / ended", f"{run.get('started_at')} / {run.get('ended_at') or '-'}"),
            ("device", f"{run.get('device') or 'unnamed profile'}, profile sha256 "
                       f"{run.get('device_sha256') or '-'}"),
            ("policy", f"{run.get('policy') or '-'}, sha256 {run.get('policy_sha256') or '-'}"),
            ("recorded by", f"leakmap {run.get('tool_version')}")]
    captures = run.get("captures") or []
    if captures:
        listed = "<br>".join(f"<code>{esc(c.get('path'))}</code> sha256 <code>{esc(c.get('sha256'))}"
                             "</code>" for c in captures)
        rows.append(("captures", listed))
    if run.get("store_raw"):
        rows.append(("raw values", "kept in the database (--store-raw); this report shows masked ones"))
    return rows


# --------------------------------------------------------------------------
# The plain-language summary


def _destinations(findings: Rows, flows: Rows) -> list[dict[str, Any]]:
    """One entry per destination (host and country) with what went there; watched first."""
    places: dict[str, dict[str, Any]] = {}
    for flow in flows:
        place = places.setdefault(svg.destination_key(flow), {
            "host": flow.get("host") or flow.get("server_ip") or "?", "country": flow.get("country"),
            "city": flow.get("city"), "operator": flow.get("operator"),
            "operator_country": flow.get("operator_country"), "watched": False, "reasons": set(),
            "flows": 0, "flagged": set(), "types": Counter(), "addresses": set(), "actions": Counter()})
        place["flows"] += 1
        place["watched"] = place["watched"] or bool(flow.get("watched"))
        if flow.get("watch_reason"):
            place["reasons"].add(flow["watch_reason"])
        if flow.get("server_ip"):
            place["addresses"].add(flow["server_ip"])
        if flow.get("action") not in (None, "log"):
            place["actions"][(flow["action"], bool(flow.get("enforced")))] += 1
    for finding in findings:
        seen = places.get(svg.destination_key(finding))
        if seen is not None:
            seen["types"][finding["data_type"]] += 1
            seen["flagged"].add((finding["run"], finding["flow_id"]))
    return sorted(places.values(), key=lambda p: (not p["watched"], -sum(p["types"].values()),
                                                  p["host"]))


def _where(place: dict[str, Any]) -> str:
    spot = ", ".join(v for v in (place["city"], place["country"] or "country unknown") if v)
    if place["operator"]:
        spot += f", operated by {place['operator']} ({place['operator_country'] or '?'})"
    return spot


def _summary(findings: Rows, flows: Rows) -> str:
    places = _destinations(findings, flows)
    leaked = [p for p in places if p["types"]]
    watched = [p for p in leaked if p["watched"]]
    types = Counter(f["data_type"] for f in findings)
    lead = (f"{len(flows)} flows were logged; {sum(len(p['flagged']) for p in leaked)} of them carried "
            f"personal data ({len(findings)} findings of {len(types)} data types) to "
            f"{len(leaked)} destinations. ")
    if watched:
        kinds = sorted({t for p in watched for t in p["types"]})
        lead += (f"Watched transfers: {', '.join(kinds)} went to {len(watched)} watched "
                 f"destination{'s' if len(watched) != 1 else ''}.")
    else:
        lead += "No personal data went to a watched destination."
    items = "".join(_summary_item(p) for p in leaked)
    return (f'<section id="summary"><h2>Summary</h2><p class="lead">{esc(lead)}</p>'
            f'<ol class="destinations">{items}</ol></section>')


def _summary_item(place: dict[str, Any]) -> str:
    kinds = ", ".join(f"{name} ({count}\u00d7)" for name, count in place["types"].most_common())
    mark = '<span class="watched">WATCHED</span> ' if place["watched"] else ""
    reason = f" [{', '.join(sorted(place['reasons']))}]" if place["reasons"] else ""
    acted = "".join(f"; {count} flow{'s' if count != 1 else ''} "
                    f"{_acted(action, enforced)}" for (action, enforced), count in place["actions"].items())
    addresses = ", ".join(sorted(place["addresses"])) or "address unknown"
    return (f"<li data-watched=\"{int(place['watched'])}\">{mark}{esc(kinds)} &rarr; "
            f"<b>{esc(place['host'])}</b> ({esc(addresses)}; {esc(_where(place))}){esc(reason)}, "
            f"in {len(place['flagged'])} of {place['flows']} flows{esc(acted)}</li>")


def _acted(action: str, enforced: bool) -> str:
    done = {"block": "blocked", "redact": "redacted", "alert": "alerted on"}.get(action, action)
    return done if enforced or action == "alert" else f"would have been {done} (offline)"


def _by_step(findings: Rows, flows: Rows) -> str:
    """For a scenario's run: what each step of the protocol sent, in step order."""
    if not any(f.get("step") for f in flows):
        return ""
    order = sorted({f["step"] for f in flows if f.get("step")}, key=lambda s: int(s.split(" ", 1)[0]))
    items = []
    for step in [*order, None]:
        mine = [f for f in findings if f.get("step") == step]
        count = sum(1 for f in flows if f.get("step") == step)
        if step is None and not count:
            continue
        kinds = Counter(f["data_type"] for f in mine)
        places = sorted({f"{f.get('host')} ({f.get('country') or '??'})" for f in mine})
        watched = sum(1 for f in mine if f.get("watched"))
        what = (", ".join(f"{k} ({n}\u00d7)" for k, n in kinds.most_common()) + " to " + ", ".join(places)
                if mine else "no personal data")
        label = f"step {step}" if step else "outside the steps"
        items.append(f'<li data-step="{esc(step or "")}"><b>{esc(label)}</b>: {count} flows; '
                     f"{esc(what)}{f' ({watched} to watched destinations)' if watched else ''}</li>")
    return f'<section id="steps"><h2>By step</h2><ol class="steps">{"".join(items)}</ol></section>'


# --------------------------------------------------------------------------
# Charts and evidence


def _charts(findings: Rows, flows: Rows) -> str:
    places = _destinations(findings, flows)
    matrix_rows = [(svg.destination_key({"host": p["host"], "country": p["country"]}),
                    f"{p['host']} ({p['country'] or '??'})", p["watched"]) for p in places if p["types"]]
    return ('<section id="charts"><h2>Where it went</h2>'
            '<h3>Destinations by country</h3><p class="note">Each bar: the flows to servers in that '
            'country (light) and the findings in them (dark); red: watched.</p>'
            f"{svg.country_chart(svg.country_bars(flows))}"
            f"<h3>Data types per destination</h3>{svg.type_matrix(findings, matrix_rows)}"
            f"<h3>Timeline of findings</h3>{svg.timeline(findings)}</section>")


def _evidence_row(finding: dict[str, Any]) -> dict[str, Any]:
    operator = finding.get("operator")
    label = f"{operator} ({finding.get('operator_country') or '?'})" if operator else ""
    return {**finding, "operator_label": label}


def _evidence(rows: Rows) -> str:
    heads = "".join(f'<th scope="col" data-numeric="{int(key == "asn")}">{esc(title)}</th>'
                    for key, title in EVIDENCE_COLUMNS)
    body = "".join(
        f'<tr data-watched="{int(bool(row.get("watched")))}"{" hidden" if index >= PAGE_ROWS else ""}>'
        + "".join(f"<td>{esc(row.get(key))}</td>" for key, _ in EVIDENCE_COLUMNS) + "</tr>"
        for index, row in enumerate(rows))
    return ('<section id="evidence"><h2>Evidence</h2>'
            '<p class="note">One row per finding: a (flow, field, data type). Values are masked; '
            'click a column to sort.</p><div class="controls">'
            '<input id="filter" type="search" placeholder="Filter: words that must all appear" size="40"> '
            '<label><input id="watched-only" type="checkbox"> watched destinations only</label> '
            f'<span id="shown">{len(rows)}</span> of {len(rows)} rows match; '
            f'<button id="prev" type="button">&larr;</button> <span id="page">rows 1&ndash;'
            f'{min(len(rows), PAGE_ROWS)}</span> <button id="next" type="button">&rarr;</button> '
            f"(pages of {PAGE_ROWS})</div>"
            f'<table id="evidence-table"><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>'
            "</section>")

