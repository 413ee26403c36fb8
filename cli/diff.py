"""``leakmap diff RUN_A RUN_B``: before/after and differential comparison of two runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from leakmap.cli.main import cli, fail_cleanly


@cli.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--db", default="", help="Database URL (default: $LEAKMAP_HOME/leakmap.db).")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "html"]),
              default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file instead of standard output.")
@fail_cleanly
def diff(run_a: str, run_b: str, db: str, output_format: str, output: Path | None) -> None:
    """Compare two runs: destinations, data types and fields seen in only one, and (when
    the device profiles differ) values that changed with the device.

    Example: leakmap diff redmi-cloud-on redmi-cloud-off

    Example: leakmap diff phone-a phone-b --format html -o diff.html
    """
    from leakmap.reports import diff as compare
    from leakmap.store import queries
    from leakmap.store.db import open_store

    if run_a == run_b:
        raise click.ClickException("give two different runs to compare")
    engine = open_store(db or None)
    runs = {run["run"]: run for run in queries.runs(engine)}
    for name in (run_a, run_b):
        if name not in runs:
            raise click.ClickException(f"no run named {name!r} in {db or 'the default database'}")
    sides = [compare.RunSide(name, runs[name].get("device_sha256"),
                             queries.findings(engine, name), queries.flows(engine, name),
                             _captured_values(runs[name]))
             for name in (run_a, run_b)]
    result = compare.compare(*sides)
    text = {"table": compare.as_text, "html": compare.as_html,
            "json": lambda r: json.dumps(compare.as_data(r), indent=2) + "\n"}[output_format](result)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


def _captured_values(run: dict[str, Any]) -> dict[tuple[str, str], set[str]] | None:
    """Every identifier-like value the run's flows sent, per (host, field), from its captures;
    None when a capture is missing or no longer what the run read."""
    from leakmap.cli.captures import run_captures
    from leakmap.reports.diff import collect_values

    captures = run_captures(run)
    if not captures or any(problem for _, problem in captures):
        return None
    try:
        return collect_values(_leaves(path for path, _ in captures))
    except ValueError:  # damaged since: compare findings only
        return None


def _leaves(paths: Iterator[Path]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    from leakmap.cli.captures import read_capture
    from leakmap.core.decode import Limits, exchange_leaves

    limits = Limits(budget_ms=0)
    for path in paths:
        for exchange in read_capture(path):
            collector = exchange_leaves(exchange, limits)
            yield (exchange.host or exchange.server_ip or "?",
                   [(leaf.path, leaf.value) for leaf in collector.leaves])
