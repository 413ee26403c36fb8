"""``leakmap export``: flagged flows as a HAR file another tool can open."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

import leakmap
from leakmap.cli.main import cli, fail_cleanly
from leakmap.core.exchange import Exchange


@cli.command("export")
@click.option("--db", default="", help="Database URL (default: $LEAKMAP_HOME/leakmap.db).")
@click.option("--run", "run_name", default=None, help="Only flows of this run.")
@click.option("--flows", "flow_ids", multiple=True,
              help="Flow ids to export (as reports show them); several may follow: --flows A B C.")
@click.argument("more_ids", nargs=-1)
@click.option("--flagged", is_flag=True, default=False, help="Every flow with findings.")
@click.option("--watched", is_flag=True, default=False,
              help="Only flows to watched destinations (with --flagged: flagged and watched).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the HAR here instead of standard output.")
@fail_cleanly
def export(db: str, run_name: str | None, flow_ids: tuple[str, ...], more_ids: tuple[str, ...],
           flagged: bool, watched: bool, output: Path | None) -> None:
    """Write flows as a HAR 1.2 file, with leakmap's findings in each entry's _leakmap.

    Requests come whole from the run's capture when it is still there
    unchanged (the SHA-256 the run recorded); otherwise from what the
    database keeps. A HAR with requests holds raw personal data: keep it as
    carefully as the capture.

    Example: leakmap export --run unit3 --flagged --watched -o evidence.har
    """
    from leakmap.reports.har_export import entry, har_document
    from leakmap.store import queries
    from leakmap.store.db import open_store

    wanted = set(flow_ids) | set(more_ids)
    if not wanted and not flagged:
        raise click.UsageError("name flows with --flows ID..., or export all flagged ones with --flagged")
    engine = open_store(db or None)
    if run_name is not None and not queries.run_exists(engine, run_name):
        raise click.ClickException(f"no run named {run_name!r} in {db or 'the default database'}")
    flows = [f for f in queries.flows(engine, run_name, (), watched)
             if f["flow_id"] in wanted or (flagged and f["finding_count"])]
    missing = wanted - {f["flow_id"] for f in flows}
    if missing:
        raise click.ClickException(f"no flow {sorted(missing)[0]!r} in "
                                   f"{'run ' + repr(run_name) if run_name else 'the database'}"
                                   f"{' to a watched destination' if watched else ''}")
    findings: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for finding in queries.findings(engine, run_name, (), watched):
        findings[(finding["run"], finding["flow_id"])].append(finding)
    sent = _from_captures(queries.runs(engine), flows)
    entries = [entry(f, findings[(f["run"], f["flow_id"])], sent.get((f["run"], f["flow_id"])))
               for f in flows]
    text = json.dumps(har_document(entries, leakmap.__version__), indent=1, ensure_ascii=False)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")
    whole = sum(1 for e in entries if e["comment"] == "request as captured")
    click.echo(f"exported {len(entries)} flows ({whole} whole from their capture)", err=True)


Sent = dict[tuple[str, str], Exchange]  # (run, flow id) -> the flow as captured


def _from_captures(runs: list[dict[str, Any]], flows: list[dict[str, Any]]) -> Sent:
    """The wanted flows as their runs' captures hold them, where a capture is unchanged."""
    from leakmap.cli.captures import read_capture, run_captures

    wanted: dict[str, set[str]] = defaultdict(set)
    for flow in flows:
        wanted[flow["run"]].add(flow["flow_id"])
    found: dict[tuple[str, str], Exchange] = {}
    for run in runs:
        ids = wanted.get(run["run"], set())
        for path, problem in run_captures(run) if ids else []:
            if problem is not None:
                continue
            try:
                for exchange in read_capture(path):
                    if exchange.flow_id in ids:
                        found[(run["run"], exchange.flow_id)] = exchange
            except ValueError:  # a capture damaged since: what was read before is kept
                continue
    return found
