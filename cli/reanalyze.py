"""``leakmap reanalyze RUN``: judge a run's stored capture again, as a new run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from leakmap.cli.main import MAX_WORKERS, _worker_choice, analyze_captures, cli, fail_cleanly
from leakmap.core.digest import file_sha256


@cli.command("reanalyze")
@click.argument("run")
@click.option("--db", default="", help="Database URL (default: $LEAKMAP_HOME/leakmap.db).")
@click.option("--policy", default=None, help="Judge with this policy (default: the run's, if its "
              "file is unchanged).")
@click.option("--device", default=None, help="Device profile (default: the run's, if its file is "
              "unchanged; its raw values are not in the database).")
@click.option("--run-name", default=None, help="Name of the new run (default: RUN-reanalysis-TIME).")
@click.option("--workers", default="auto", show_default=True, callback=_worker_choice,
              help=f"As for analyze: 0 to {MAX_WORKERS}, or auto.")
@fail_cleanly
def reanalyze(run: str, db: str, policy: str | None, device: str | None, run_name: str | None,
              workers: str) -> None:
    """Analyse a run's stored capture again, as a new run; the old one stays as it was.

    Example: leakmap reanalyze unit3-boot --policy policies/strict-defence.yaml
    """
    from leakmap.store import queries
    from leakmap.store.db import open_store

    engine = open_store(db or None)
    found = {row["run"]: row for row in queries.runs(engine)}
    if run not in found:
        raise click.ClickException(f"no run named {run!r} in {db or 'the default database'}")
    old = found[run]
    captures = _captures(old)
    recorded = old.get("settings") or {}
    settings = {
        "policy": policy or _unchanged(recorded.get("policy"), old.get("policy_sha256"), "policy",
                                       _policy_sha256),
        "device": device or _unchanged(recorded.get("device"), old.get("device_sha256"),
                                       "device profile", file_sha256),
        "db": db, "run_name": run_name or f"{run}-reanalysis-{_now()}",
        "geoip_dir": recorded.get("geoip_dir") or "", "geodb_max_age": 180,
        "networks": recorded.get("networks") or "", "store_raw": False, "hash_key_file": "",
        "max_body": recorded.get("max_body") or 16 * 2**20, "analysis_budget_ms": 0,
    }
    analyze_captures(captures, workers, settings, mode=f"reanalysis of {run}")
    from leakmap.store.db import copy_steps

    old_id, new_id = queries.run_id(engine, run), queries.run_id(engine, settings["run_name"])
    if old_id is not None and new_id is not None:  # the flows keep their times, so their steps
        copy_steps(engine, old_id, new_id)


def _captures(run: dict[str, Any]) -> tuple[Path, ...]:
    from leakmap.cli.captures import run_captures

    checked = run_captures(run)
    if not checked:
        raise click.ClickException(f"run {run['run']!r} kept no capture (started with --capture-dir "
                                   "none, or by a leakmap before captures were kept)")
    for _path, problem in checked:
        if problem is not None:
            raise click.ClickException(problem)
    if any(not capture.get("sha256") for capture in run["captures"]):
        click.echo(f"Warning: run {run['run']!r} did not end cleanly; its capture is read as far "
                   "as it is whole", err=True)
    return tuple(path for path, _ in checked)


def _unchanged(path: str | None, sha256: str | None, what: str, digest: Any) -> str:
    """The run's file, if it is still there as the run read it; '' when it had none."""
    if not path:
        return ""
    if Path(path).is_file() and (sha256 is None or digest(Path(path)) == sha256):
        return path
    flag = "--policy" if what == "policy" else "--device"
    raise click.ClickException(f"the run's {what} {path} is gone or has changed since: give "
                               f"{flag} FILE")


def _policy_sha256(path: Path) -> str:
    from leakmap.policies.model import load_policy

    return load_policy(path).sha256


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
