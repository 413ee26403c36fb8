"""``leakmap diff``: what one run sent that the other did not, and values that followed the device.

Two uses:

* before/after: the same phone with a setting on, then off. What appears in
  only one run: destinations, data types (overall and per destination), and
  fields (host, field path, data type).
* differential: the same app with two device profiles. A field whose value
  is the same in every flow of a run, yet differs between the runs while the
  device's identifiers differ too, is likely derived from them, even when no
  known encoding matches (an app's own obfuscation). These come from the
  runs' captures, whose every decoded value is compared; findings already
  name some of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from leakmap.core.redact import mask
from leakmap.reports.svg import esc

Rows = Sequence[dict[str, Any]]
_MIN_ID = 6  # characters of letters and digits an identifier-like value has at least


@dataclass
class RunSide:
    name: str
    device_sha256: str | None
    findings: Rows
    flows: Rows
    # (host, field path) -> every value seen there, from the run's captures (None: not read)
    values: dict[tuple[str, str], set[str]] | None = None


@dataclass
class Comparison:
    a: str
    b: str
    device_changed: bool
    only: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # what -> run -> items
    followed_device: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _destinations(side: RunSide) -> set[tuple[str, str, str]]:
    return {(f.get("host") or f.get("server_ip") or "?", f.get("country") or "??",
             f.get("operator") or "-") for f in side.flows}


def _types(side: RunSide) -> set[str]:
    return {f["data_type"] for f in side.findings}


def _types_per_destination(side: RunSide) -> set[tuple[str, str]]:
    return {(f.get("host") or "?", f["data_type"]) for f in side.findings}


def _fields(side: RunSide) -> set[tuple[str, str, str]]:
    return {(f.get("host") or "?", f["field"], f["data_type"]) for f in side.findings}


def compare(a: RunSide, b: RunSide) -> Comparison:
    result = Comparison(a.name, b.name, a.device_sha256 != b.device_sha256)
    for what, pick in (("destinations", _destinations), ("data_types", _types),
                       ("data_types_per_destination", _types_per_destination), ("fields", _fields)):
        left, right = pick(a), pick(b)
        result.only[what] = {a.name: sorted(left - right), b.name: sorted(right - left)}
    result.followed_device = _followed(a, b) if result.device_changed else []
    if not result.device_changed:
        result.notes.append("the two runs used the same device profile: no differential comparison")
    for side in (a, b):
        if side.values is None:
            result.notes.append(f"run {side.name}: its captures could not be read (moved, changed or "
                                "not recorded): values compared from findings only")
    return result


def identifier_like(value: str) -> bool:
    """Long enough and made mostly of letters and digits, with at least one digit."""
    alnum = sum(ch.isalnum() for ch in value)
    return 8 <= len(value) <= 256 and alnum >= _MIN_ID and alnum * 4 >= len(value) * 3 and any(
        ch.isdigit() for ch in value)


def _followed(a: RunSide, b: RunSide) -> list[dict[str, Any]]:
    """Fields whose one value in run A differs from their one value in run B.  Values read
    from captures on one side and keyed hashes on the other do not compare: then both sides
    use their findings."""
    if (a.values is None) != (b.values is None):
        a, b = (RunSide(side.name, side.device_sha256, side.findings, side.flows) for side in (a, b))
    left, right = _stable(a), _stable(b)
    found = {(f.get("host") or "?", f["field"]): f["data_type"] for f in (*a.findings, *b.findings)}
    changed = []
    for key in sorted(left.keys() & right.keys()):
        (compared_a, shown_a), (compared_b, shown_b) = left[key], right[key]
        if compared_a != compared_b:
            host, path = key
            changed.append({"host": host, "field": path, a.name: shown_a, b.name: shown_b,
                            "finding": found.get(key)})
    return changed


def _stable(side: RunSide) -> dict[tuple[str, str], tuple[str, str]]:
    """(host, field) -> (its value, as shown), where every flow of the run had the same one.
    Without captures, the findings' keyed hashes are compared and their previews shown."""
    if side.values is not None:
        return {key: (value, mask(value)) for key, values in side.values.items()
                if len(values) == 1 for value in values}
    hashes: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for f in side.findings:
        hashes[(f.get("host") or "?", f["field"])].add((f["value_hash"], f["preview"]))
    return {key: pair for key, pairs in hashes.items() if len(pairs) == 1 for pair in pairs}


def collect_values(items: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> dict[tuple[str, str], set[str]]:
    """(host, [(field path, value)...]) per flow -> the identifier-like values per (host, field)."""
    values: dict[tuple[str, str], set[str]] = defaultdict(set)
    for host, leaves in items:
        for path, value in leaves:
            if identifier_like(value):
                values[(host, path)].add(value)
    return values


# --------------------------------------------------------------------------
# Output


def as_data(result: Comparison) -> dict[str, Any]:
    return {"run_a": result.a, "run_b": result.b, "device_changed": result.device_changed,
            "only_in": {what: {run: [list(item) if isinstance(item, tuple) else item for item in items]
                               for run, items in sides.items()} for what, sides in result.only.items()},
            "followed_device": result.followed_device, "notes": result.notes}


def as_text(result: Comparison) -> str:
    lines = [f"leakmap diff {result.a} {result.b}"]
    titles = {"destinations": "destinations (host, country, operator)", "data_types": "data types",
              "data_types_per_destination": "data types per destination (host, data type)",
              "fields": "fields (host, field path, data type)"}
    for what, title in titles.items():
        for run, items in result.only[what].items():
            lines.append(f"only in {run}: {title}: {len(items)}")
            lines += [f"  {_item(item)}" for item in items]
    if result.device_changed:
        lines.append(f"values that changed with the device (one value per run, different between "
                     f"runs): {len(result.followed_device)}")
        lines += [f"  {c['host']} {c['field']}: {c[result.a]} -> {c[result.b]}"
                  f"{' (finding: ' + c['finding'] + ')' if c['finding'] else ' (no finding: obfuscated?)'}"
                  for c in result.followed_device]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _item(item: Any) -> str:
    return "  ".join(item) if isinstance(item, tuple) else str(item)


def as_html(result: Comparison) -> str:
    """A self-contained page whose ``<section id="diff">`` can be pasted into a report."""
    blocks = []
    for what, sides in result.only.items():
        for run, items in sides.items():
            cells = "".join(f"<li>{esc(_item(item))}</li>" for item in items) or "<li>none</li>"
            blocks.append(f"<h3>Only in {esc(run)}: {esc(what.replace('_', ' '))}</h3><ul>{cells}</ul>")
    if result.device_changed:
        rows = "".join(
            f"<tr><td>{esc(c['host'])}</td><td>{esc(c['field'])}</td><td>{esc(c[result.a])}</td>"
            f"<td>{esc(c[result.b])}</td><td>{esc(c['finding'] or 'none: obfuscated?')}</td></tr>"
            for c in result.followed_device)
        blocks.append(f"<h3>Values that changed with the device</h3><table><tr><th>host</th><th>field"
                      f"</th><th>{esc(result.a)}</th><th>{esc(result.b)}</th><th>finding</th></tr>"
                      f"{rows}</table>")
    blocks += [f'<p class="note">{esc(note)}</p>' for note in result.notes]
    section = (f'<section id="diff"><h2>Differences between {esc(result.a)} and {esc(result.b)}</h2>'
               + "".join(blocks) + "</section>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'\">"
            f"<title>leakmap diff {esc(result.a)} {esc(result.b)}</title><style>body{{font-family:"
            "system-ui,sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}</style></head>"
            f"<body>{section}</body></html>\n")
