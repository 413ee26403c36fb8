"""``leakmap step next`` and ``leakmap step show``: a scenario's steps, from another terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from leakmap.cli.main import cli, fail_cleanly

if TYPE_CHECKING:
    from sqlalchemy import Engine


@cli.group("step")
def step_group() -> None:
    """Advance or show the steps of a run started with --scenario."""


def _run_id(db: str, run: str | None) -> tuple[Engine, int, str]:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from leakmap.store.db import open_store
    from leakmap.store.schema import Run, Step

    engine = open_store(db or None)
    with Session(engine) as session:
        query = select(Run.id, Run.name).where(Run.id.in_(select(Step.run_id)))
        if run is not None:
            found = session.execute(query.where(Run.name == run)).first()
            if found is None:
                raise click.ClickException(f"no run named {run!r} with scenario steps in "
                                           f"{db or 'the default database'}")
        else:  # the newest running run with steps
            found = session.execute(query.where(Run.status == "running").order_by(Run.id.desc())).first()
            if found is None:
                raise click.ClickException("no running run with a scenario: start one with "
                                           "leakmap run --scenario FILE, or name it with --run")
    return engine, found[0], found[1]


def _which_run(function: Any) -> Any:
    """``--run`` and ``--db``: the run whose steps a command works on."""
    function = click.option("--db", default="", help="Database URL (default: "
                            "$LEAKMAP_HOME/leakmap.db).")(function)
    return click.option("--run", "run", default=None,
                        help="The run (default: the newest running one with steps).")(function)


@step_group.command("next")
@_which_run
@fail_cleanly
def next_step(run: str | None, db: str) -> None:
    """End the current step and start the next.

    Example: leakmap step next --run redmi-retest
    """
    from leakmap.store.db import advance_step

    engine, run_id, name = _run_id(db, run)
    ended, started = advance_step(engine, run_id)
    parts = [f"run {name}"]
    if ended:
        parts.append(f"ended step {ended}")
    parts.append(f"started step {started}" if started else "no step left: the scenario is complete")
    click.echo("; ".join(parts))


@step_group.command("show")
@_which_run
@fail_cleanly
def show_steps(run: str | None, db: str) -> None:
    """List a run's steps with their start and end.

    Example: leakmap step show --run redmi-retest
    """
    from leakmap.store import queries

    engine, _run_id_value, name = _run_id(db, run)
    for step in queries.steps(engine, name):
        state = ("not reached" if step["started_at"] is None else
                 f"{step['started_at']} .. {step['ended_at'] or 'now'}")
        click.echo(f"{step['number']:>2} {step['name']:<24} {state}")
